"""The sweep job: scaling-law sweeps planned, run (one after another, resumable), printed as cluster commands,
collected and analysed (keras_nfnet.scaling.sweep).

    # what would run, and the compute it would take (nothing is trained)
    nfnet-sweep --config=sweep_toy --workdir=/tmp/toy --mode=plan
    # run the whole sweep here; re-running the same command resumes it
    nfnet-sweep --config=sweep_toy --workdir=/tmp/toy --mode=run
    # on a cluster: print one job command per run that can start now (each runs the pretraining job and records
    # a divergence), run them as independent jobs, then collect their results and ask for the next wave
    nfnet-sweep --config=sweep_toy --workdir=/shared/toy --mode=commands
    nfnet-sweep --config=sweep_toy --workdir=/shared/toy --mode=collect
    # fits, plots (PNG + TensorBoard) and the text report
    nfnet-sweep --config=sweep_toy --workdir=/tmp/toy --mode=analyze
    # after fine-tuning a run: add its accuracy to the table
    nfnet-sweep --config=sweep_toy --workdir=/tmp/toy --mode=annotate --run_id=S2-e4-lr0.4 --finetune_accuracy=0.81

`--mode=run` analyses at the end as well and writes the job result (`result.json`: runs, cells, each cell's best
learning rate). `--results` analyses a table of runs made elsewhere (JSON lines or CSV). The table of runs is
`<workdir>/runs.jsonl`; each run trains in `<workdir>/runs/<run_id>/`.
"""
import sys

from absl import app as absl_app
from absl import flags

from keras_nfnet import cli, storage
from keras_nfnet.jobs import context
from keras_nfnet.scaling import sweep as sweeplib

FLAGS = flags.FLAGS


def _define_flags():
    from keras_nfnet.jobs import app

    if "mode" in FLAGS:  # defined by an earlier call in this process
        return
    app.define_flags(workdir_help="the sweep's directory: runs.jsonl, runs/<run_id>/, analysis/, result.json",
                     workdir_required=False)
    flags.DEFINE_enum("mode", "plan", ["plan", "run", "commands", "run_one", "collect", "analyze", "annotate"],
                      "what to do")
    flags.DEFINE_integer("max_runs", None, "--mode=run: stop after launching this many runs (resume later)")
    flags.DEFINE_string("results", None, "--mode=analyze: a table of runs (.jsonl or .csv) instead of the sweep's")
    flags.DEFINE_string("out", None, "--mode=analyze: output folder (default <workdir>/analysis)")
    flags.DEFINE_string("python", "python", "--mode=commands: the Python interpreter named in the commands")
    flags.DEFINE_string("run_id", None, "--mode=run_one / annotate: the run")
    flags.DEFINE_float("finetune_accuracy", None, "--mode=annotate: the run's fine-tuned top-1 accuracy (0..1)")


def _main(argv):
    del argv  # cli.run refuses stray arguments
    try:
        _run_mode(sweeplib.from_config(FLAGS.config))
    except RuntimeError as error:  # a run failed or was preempted; re-running resumes
        return cli.report(error, 1)
    return 0


def _sweep_args():
    """The flags that name this sweep again in a cluster job: its config file and the overrides given."""
    from ml_collections import config_flags

    overrides = config_flags.get_override_values(FLAGS["config"])
    return ([f"--config={config_flags.get_config_filename(FLAGS['config'])}"] +
            [f"--config.{k}={sweeplib._fmt(v)}" for k, v in overrides.items()])


def _run_mode(spec):
    clock = context.Clock()
    if FLAGS.mode != "analyze" or not FLAGS.results:
        if not FLAGS.workdir:
            raise absl_app.UsageError(f"--workdir is required for --mode={FLAGS.mode}")
    if FLAGS.mode == "plan":
        print(sweeplib.describe_plan(spec, FLAGS.workdir))
    elif FLAGS.mode == "commands":
        plan = sweeplib.plan_sweep(spec, _store().load(), FLAGS.workdir)
        if plan.ready:
            print(sweeplib.format_commands(plan.ready, _sweep_args(), FLAGS.workdir, FLAGS.python))
        if plan.complete:
            print("# the sweep is complete: nothing left to run (--mode=analyze for the fits)", file=sys.stderr)
        else:
            print(f"# {len(plan.ready)} runs can start now; {len(plan.waiting)} cells wait for them. When they have "
                  f"finished, run --mode=collect, then --mode=commands again.", file=sys.stderr)
    elif FLAGS.mode == "run_one":
        if not FLAGS.run_id:
            raise absl_app.UsageError("--mode=run_one needs --run_id (as printed by --mode=commands)")
        sweeplib.run_one(spec, FLAGS.workdir, FLAGS.run_id)
    elif FLAGS.mode == "collect":
        n = sweeplib.collect(spec, FLAGS.workdir)
        print(f"collected {n} finished runs into {_store().path}")
    elif FLAGS.mode == "annotate":
        if not FLAGS.run_id or FLAGS.finetune_accuracy is None:
            raise absl_app.UsageError("--mode=annotate needs --run_id and --finetune_accuracy")
        if not 0 <= FLAGS.finetune_accuracy <= 1:
            raise absl_app.UsageError(f"--finetune_accuracy is a fraction in [0, 1], got {FLAGS.finetune_accuracy}")
        row = _store().update(FLAGS.run_id, finetune_accuracy=FLAGS.finetune_accuracy)
        print(f"{row.run_id}: finetune_accuracy {row.finetune_accuracy}")
    elif FLAGS.mode == "run":
        plan = sweeplib.run_sweep(spec, FLAGS.workdir, max_runs=FLAGS.max_runs)
        if plan.complete:
            out = _analyze(spec)
            metrics = {"runs": plan.runs_done, "cells": len(spec.variants) * len(spec.epoch_budgets),
                       "best_learning_rates": {f"{v}-e{e:g}": lr for (v, e), lr in sorted(plan.finished.items())},
                       "table": _store().path, "analysis": out}
            context.write_result(FLAGS.workdir, context.result("sweep", "done", FLAGS.workdir, FLAGS.config, metrics,
                                                               seconds=clock.seconds()))
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
            raise FileNotFoundError(f"table of runs {FLAGS.results} does not exist")
        results = read_csv(FLAGS.results) if FLAGS.results.endswith(".csv") else ResultsStore(FLAGS.results).load()
    else:
        results = _store().load()
    out = FLAGS.out or storage.join(FLAGS.workdir or storage.dirname(FLAGS.results), "analysis")
    report.analyze(results, out, compute=spec.compute, size=spec.size, irreducible=spec.irreducible,
                   n_bootstrap=spec.n_bootstrap, tensorboard_dir=storage.join(out, "tensorboard"))
    print(storage.read_text(storage.join(out, "report.txt")))
    print(f"figures, fits.json and results.csv in {out}")
    return out


def main():
    """The console script `nfnet-sweep` (and `python -m keras_nfnet.jobs.sweep`)."""
    from keras_nfnet.jobs import app

    _define_flags()
    app.run(_main)


if __name__ == "__main__":
    main()
