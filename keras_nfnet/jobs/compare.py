"""The comparison job: NFNet vs ViT at equal pretraining compute, fine-tuned on one labelled corpus.

    nfnet-compare --config=compare_toy --workdir=/tmp/nfnet_toy/compare          # from the toy study's sweeps
    nfnet-compare --config=compare_toy --config.models="('S0','ViT-0')" --config.pretrain.corpus=/data/synth \
        --config.pretrain.epochs=2 --workdir=/runs/compare                          # pretrain the models here

Two sources of pretrained models: `models` pretrains each listed model with the `pretrain` config (a whole
pretraining config) in `<workdir>/pretrain/<model>`; otherwise, for every sweep in `sweeps` and every budget in
`budgets`, the best-LR run of each model is taken. Each is fine-tuned with the `finetune` config (a whole
fine-tuning config; `--config.finetune.<field>=value` changes any field) in `<workdir>/finetune/<name>`. The rows
go to `comparison.json`, `comparison.md`, the figure `finetuned_top1_vs_compute.png` (also in TensorBoard) and
`result.json`. Finished pretraining and fine-tuning
runs are kept, so an interrupted comparison goes on where it stopped.
"""
from keras_nfnet import architectures, storage
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs import context
from keras_nfnet.jobs import defaults


def _named(values):
    """The non-empty entries of a tuple field (("",) is the field's "none")."""
    return [v for v in values if v]


def validate(config):
    """(pretraining config or None, fine-tuning config); ValueError naming every bad field first."""
    problems = config_lib.check_fields(config, defaults.compare())
    if problems:
        raise ValueError("bad comparison config:\n  - " + "\n  - ".join(problems))
    models = _named(config.models)
    problems += [f"finetune: {p}" for p in config_lib.check_fields(config.finetune, defaults.finetune())]
    if models:
        for model in models:
            try:
                architectures.family(model)
            except ValueError as e:
                problems.append(f"models: {e}")
        problems += [f"pretrain: {p}" for p in config_lib.check_fields(config.pretrain, defaults.pretrain())]
    else:
        sweeps = _named(config.sweeps)
        missing = [s for s in sweeps if not storage.exists(s)]
        if not sweeps or missing:
            problems.append(f"give models to pretrain, or sweeps (finished sweeps' workdirs); missing: {missing}")
        if not config.budgets or any(not b > 0 for b in config.budgets):
            problems.append(f"budgets must be positive epoch budgets; got {list(config.budgets)}")
    if problems:
        raise ValueError("bad comparison config:\n  - " + "\n  - ".join(problems))
    return (config.pretrain if models else None), config.finetune


def compare(config, workdir, log=print):
    """Run (or resume) the comparison; returns the result dict (also in result.json)."""
    from keras_nfnet.scaling import families

    clock = context.Clock()
    pretrain_config, finetune_config = validate(config)
    context.check_workdir(workdir)
    if pretrain_config is not None:
        rows = families.compare_families(_named(config.models), pretrain_config, finetune_config, workdir,
                                         log=log)
    else:
        rows = families.compare_sweeps(_named(config.sweeps), list(config.budgets), finetune_config,
                                       workdir, log=log)
    metrics = {"rows": rows, "table": storage.join(workdir, "comparison.md"),
               "figure": storage.join(workdir, families.COMPARISON_FIGURE)}
    return context.write_result(workdir, context.result("compare", "done", workdir, config, metrics,
                                                        seconds=clock.seconds()))


def _main(argv):
    from absl import flags

    del argv
    result = compare(flags.FLAGS.config, flags.FLAGS.workdir)
    print(storage.read_text(result["metrics"]["table"]), end="")
    print(f"figure: {result['metrics']['figure']}; result in {storage.join(result['workdir'], context.RESULT_FILE)}",
          flush=True)
    return 0


def main():
    """The console script `nfnet-compare` (and `python -m keras_nfnet.jobs.compare`)."""
    from keras_nfnet.jobs import app

    app.define_flags(workdir_help="holds pretrain/, finetune/, comparison.md, the figure and result.json")
    app.run(_main)


if __name__ == "__main__":
    main()
