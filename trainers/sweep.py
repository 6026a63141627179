"""Scaling-law sweeps: plan, run (one after another, resumable), print cluster commands, collect, analyse.

    # what would run, and the compute it would take (nothing is trained)
    python trainers/sweep.py --sweep trainers/configs/sweep_toy.py --workdir /tmp/toy --mode plan
    # run the whole sweep here; re-running the same command resumes it
    python trainers/sweep.py --sweep trainers/configs/sweep_toy.py --workdir /tmp/toy --mode run
    # on a cluster: print one job command per run that can start now (each runs trainers/pretrain.py and records
    # a divergence), run them as independent jobs, then collect their results and ask for the next wave
    python trainers/sweep.py --sweep trainers/configs/sweep_toy.py --workdir /shared/toy --mode commands
    python trainers/sweep.py --sweep trainers/configs/sweep_toy.py --workdir /shared/toy --mode collect
    # fits, plots (PNG + TensorBoard) and the text report
    python trainers/sweep.py --sweep trainers/configs/sweep_toy.py --workdir /tmp/toy --mode analyze

    # after fine-tuning a run: add its accuracy to the table
    python trainers/sweep.py --sweep trainers/configs/sweep_toy.py --workdir /tmp/toy --mode annotate \
        --run_id S2-e4-lr0.4 --finetune_accuracy 0.81

`--mode run` analyses at the end as well. `--results` analyses a results table made elsewhere (JSON lines or CSV).
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet import cli, storage  # noqa: E402
from keras_nfnet.scaling import sweep as sweeplib  # noqa: E402

flags.DEFINE_string("sweep", None, "sweep file, optionally with overrides: path.py[:key=value,...]")
flags.DEFINE_string("workdir", None, "the sweep's directory: results.jsonl, runs/<run_id>/, analysis/")
flags.DEFINE_enum("mode", "plan", ["plan", "run", "commands", "run_one", "collect", "analyze", "annotate"],
                  "what to do")
flags.DEFINE_integer("max_runs", None, "--mode run: stop after launching this many runs (resume later)")
flags.DEFINE_string("results", None, "--mode analyze: a results table (.jsonl or .csv) instead of the sweep's")
flags.DEFINE_string("out", None, "--mode analyze: output folder (default <workdir>/analysis)")
flags.DEFINE_string("python", "python", "--mode commands: the Python interpreter named in the commands")
flags.DEFINE_string("run_id", None, "--mode run_one / annotate: the run")
flags.DEFINE_float("finetune_accuracy", None, "--mode annotate: the run's fine-tuned top-1 accuracy (0..1)")
flags.mark_flag_as_required("sweep")
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run refuses stray arguments
    try:
        _main()
    except RuntimeError as error:  # a run failed or was preempted; re-running resumes
        return cli.report(error, 1)
    return 0


def _main():
    spec = sweeplib.load_sweep(FLAGS.sweep)
    if FLAGS.mode != "analyze" or not FLAGS.results:
        if not FLAGS.workdir:
            raise app.UsageError("--workdir is required for this mode")
    if FLAGS.mode == "plan":
        print(sweeplib.describe_plan(spec, FLAGS.workdir))
    elif FLAGS.mode == "commands":
        plan = sweeplib.plan_sweep(spec, _store().load(), FLAGS.workdir)
        if plan.ready:
            print(sweeplib.format_commands(plan.ready, FLAGS.sweep, FLAGS.workdir, FLAGS.python))
        if plan.complete:
            print("# the sweep is complete: nothing left to run (--mode analyze for the fits)", file=sys.stderr)
        else:
            print(f"# {len(plan.ready)} runs can start now; {len(plan.waiting)} cells wait for them. When they have "
                  f"finished, run --mode collect, then --mode commands again.", file=sys.stderr)
    elif FLAGS.mode == "run_one":
        if not FLAGS.run_id:
            raise app.UsageError("--mode run_one needs --run_id (as printed by --mode commands)")
        sweeplib.run_one(spec, FLAGS.workdir, FLAGS.run_id)
    elif FLAGS.mode == "collect":
        n = sweeplib.collect(spec, FLAGS.workdir)
        print(f"collected {n} finished runs into {_store().path}")
    elif FLAGS.mode == "annotate":
        if not FLAGS.run_id or FLAGS.finetune_accuracy is None:
            raise app.UsageError("--mode annotate needs --run_id and --finetune_accuracy")
        if not 0 <= FLAGS.finetune_accuracy <= 1:
            raise app.UsageError(f"--finetune_accuracy is a fraction in [0, 1], got {FLAGS.finetune_accuracy}")
        row = _store().update(FLAGS.run_id, finetune_accuracy=FLAGS.finetune_accuracy)
        print(f"{row.run_id}: finetune_accuracy {row.finetune_accuracy}")
    elif FLAGS.mode == "run":
        plan = sweeplib.run_sweep(spec, FLAGS.workdir, max_runs=FLAGS.max_runs)
        if plan.complete:
            _analyze(spec)
    else:
        _analyze(spec)


def _store():
    from keras_nfnet.scaling.results import ResultsStore

    return ResultsStore(storage.join(FLAGS.workdir, sweeplib.RESULTS_FILE))


def _analyze(spec):
    from keras_nfnet.scaling import report
    from keras_nfnet.scaling.results import ResultsStore, read_csv

    if FLAGS.results:
        if not storage.exists(FLAGS.results):
            raise FileNotFoundError(f"results table {FLAGS.results} does not exist")
        results = read_csv(FLAGS.results) if FLAGS.results.endswith(".csv") else ResultsStore(FLAGS.results).load()
    else:
        results = _store().load()
    out = FLAGS.out or storage.join(FLAGS.workdir or storage.dirname(FLAGS.results), "analysis")
    report.analyze(results, out, compute=spec.compute, size=spec.size, irreducible=spec.irreducible,
                   n_bootstrap=spec.n_bootstrap, tensorboard_dir=storage.join(out, "tensorboard"))
    print(storage.read_text(storage.join(out, "report.txt")))
    print(f"figures, fits.json and results.csv in {out}")


if __name__ == "__main__":
    cli.run(main)
