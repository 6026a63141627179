"""NFNet vs ViT at equal pretraining compute: pretrain each model with the same trainer, corpus and budget, fine-tune
each on the same labelled corpus, and tabulate fine-tuned top-1 against pretraining compute.

Two ways in:

    # pretrain and fine-tune each model here (one budget)
    rows = compare_families(["S0", "ViT-0"], config.load("cpu_tiny", corpus="/data/synth", epochs=2.0),
                            config.load("finetune", corpus="/data/digits", epochs=3.0), workdir="/runs/compare")
    # fine-tune the best-LR run of each (model, budget) of finished sweeps (the toy study: nfnet-compare)
    rows = compare_sweeps(["/runs/nfnet_sweep", "/runs/vit_sweep"], [0.5, 2.0], finetune_config, "/runs/compare")

Pretraining runs live in `<workdir>/pretrain/<model>` (compare_families) or in the sweeps; fine-tuning runs in
`<workdir>/finetune/<label>`. Both steps resume or are skipped when their results are already there, so an
interrupted comparison goes on where it stopped.
"""
import json
import math
import os
from typing import List, Sequence, Tuple

from keras_nfnet import architectures, storage

FIELDS = ("family", "model", "epochs", "learning_rate", "params", "macs_per_image", "pretrain_steps",
          "pretrain_flops", "pretrain_device_hours", "heldout_loss", "finetune_top1", "finetune_top1_ema",
          "finetune_top5", "pretrain_dir")
COMPARISON_FIGURE = "finetuned_top1_vs_compute.png"


def compare_families(models: Sequence[str], pretrain_config, finetune_config, workdir: str,
                     log=print) -> List[dict]:
    """One row (dict of FIELDS) per model; also written to `<workdir>/comparison.json` and `comparison.md`.

    `pretrain_config` is a pretraining config (ConfigDict); each model gets `variant=<model>` on top.
    `finetune_config` is a fine-tuning config whose `source` is set to each model's pretraining workdir.
    """
    from keras_nfnet.jobs import config as config_lib
    from keras_nfnet.jobs import context
    from keras_nfnet.jobs.pretrain import pretrain

    for model in models:
        architectures.family(model)  # unknown names fail before any training
    runs = []
    for model in models:
        pre_dir = storage.join(workdir, "pretrain", model)
        if not context.read_result(pre_dir):
            pretrain(config_lib.override(pretrain_config, {"variant": model}), pre_dir)
        runs.append((model, pre_dir))
    return finetune_runs(runs, finetune_config, workdir, log=log)


def best_runs(sweep_workdir: str, budgets: Sequence[float]) -> List[Tuple[str, str]]:
    """(label, run_dir) of the best-LR finished run of every (model, budget) of a sweep, for the given budgets
    (smallest model first); ValueError naming a budget the sweep has no finished run at."""
    from keras_nfnet.scaling.results import ResultsStore
    from keras_nfnet.scaling.sweep import RESULTS_FILE

    rows = [r for r in ResultsStore(storage.join(sweep_workdir, RESULTS_FILE)).load()
            if r.ok and r.heldout_loss is not None and math.isfinite(r.heldout_loss)]
    out = []
    for epochs in budgets:
        at = [r for r in rows if math.isclose(r.epochs, epochs, rel_tol=1e-9)]
        if not at:
            raise ValueError(f"sweep {sweep_workdir} has no finished run at {epochs:g} epochs (it has "
                             f"{sorted({r.epochs for r in rows})}); finish the sweep first")
        for variant in dict.fromkeys(r.variant for r in sorted(at, key=lambda r: r.params)):
            best = min((r for r in at if r.variant == variant), key=lambda r: (r.heldout_loss, r.learning_rate))
            out.append((best.run_id, best.run_dir))
    return out


def compare_sweeps(sweep_workdirs: Sequence[str], budgets: Sequence[float], finetune_config, workdir: str,
                   log=print) -> List[dict]:
    """Fine-tune the best-LR run of every (model, budget in `budgets`) of each sweep; rows as compare_families."""
    runs = [run for sweep in sweep_workdirs for run in best_runs(sweep, budgets)]
    return finetune_runs(runs, finetune_config, workdir, log=log)


def finetune_runs(runs: Sequence[Tuple[str, str]], finetune_config, workdir: str, log=print) -> List[dict]:
    """Fine-tune each (label, pretraining run directory) in `<workdir>/finetune/<label>` (skipped when its result
    is there); the rows, also in `<workdir>/comparison.json`, `comparison.md` and the figure COMPARISON_FIGURE."""
    from keras_nfnet.jobs import config as config_lib
    from keras_nfnet.jobs import context
    from keras_nfnet.jobs.finetune import finetune
    from keras_nfnet.scaling import run_summary

    rows = []
    for label, pre_dir in runs:
        ft_dir = storage.join(workdir, "finetune", label)
        ft = context.read_result(ft_dir) or finetune(config_lib.override(finetune_config, {"source": pre_dir}),
                                                     ft_dir)
        pre, ft = run_summary.read_run_dir(pre_dir), ft["metrics"]
        rows.append({"family": architectures.family(pre.variant), "model": pre.variant, "epochs": pre.epochs,
                     "learning_rate": pre.learning_rate, "params": pre.params, "macs_per_image": pre.macs_per_image,
                     "pretrain_steps": pre.steps, "pretrain_flops": pre.flops,
                     "pretrain_device_hours": pre.device_hours, "heldout_loss": pre.heldout_loss,
                     "finetune_top1": ft["top1"], "finetune_top1_ema": ft["top1_ema"], "finetune_top5": ft["top5"],
                     "pretrain_dir": pre_dir})
        log(format_table(rows[-1:]).splitlines()[-1])
    storage.makedirs(workdir)
    storage.write_atomic(storage.join(workdir, "comparison.json"), json.dumps(rows, indent=1))
    storage.write_atomic(storage.join(workdir, "comparison.md"), format_table(rows) + "\n")
    from keras_nfnet.scaling import plots

    with storage.staged_dir(workdir) as local:
        png = plots.plot_finetune_vs_compute(rows, os.path.join(local, COMPARISON_FIGURE))
        plots.write_tensorboard_images([png], storage.join(workdir, "tensorboard"))
    return rows


def format_table(rows) -> str:
    lines = ["| family | model | epochs | params | MACs/image | pretraining FLOPs | device-hours | held-out loss | "
             "fine-tuned top-1 (EMA) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ema = f" ({r['finetune_top1_ema']:.3f})" if r["finetune_top1_ema"] is not None else ""
        lines.append(f"| {r['family']} | {r['model']} | {r['epochs']:g} | {r['params']:,} | "
                     f"{r['macs_per_image']:.3g} | {r['pretrain_flops']:.3g} | {r['pretrain_device_hours']:.3g} | "
                     f"{r['heldout_loss']:.4f} | {r['finetune_top1']:.3f}{ema} |")
    return "\n".join(lines)
