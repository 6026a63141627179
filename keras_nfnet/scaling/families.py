"""NFNet vs ViT at equal pretraining compute: pretrain each model with the same trainer, corpus and budget, fine-tune
each on the same labelled corpus, and tabulate fine-tuned top-1 against pretraining compute.

    from keras_nfnet.jobs import config
    rows = compare_families(["S0", "ViT-0"], config.load("cpu_tiny", corpus="/data/synth", epochs=2.0),
                            config.load("finetune", corpus="/data/digits", epochs=3.0), workdir="/runs/compare")

Each model pretrains in `<workdir>/pretrain/<model>` and fine-tunes in `<workdir>/finetune/<model>`. Both steps
resume or are skipped when their results are already there, so an interrupted comparison goes on where it stopped.
"""
import json
from typing import List, Sequence

from keras_nfnet import architectures, storage

FIELDS = ("family", "model", "params", "macs_per_image", "pretrain_steps", "pretrain_flops", "pretrain_device_hours",
          "heldout_loss", "finetune_top1", "finetune_top1_ema", "finetune_top5")


def compare_families(models: Sequence[str], pretrain_config: str, finetune_config, workdir: str,
                     log=print) -> List[dict]:
    """One row (dict of FIELDS) per model; also written to `<workdir>/comparison.json` and `comparison.md`.

    `pretrain_config` is a pretraining config (ConfigDict); each model gets `variant=<model>` on top.
    `finetune_config` is a fine-tuning config whose `source` is set to each model's pretraining workdir.
    """
    from keras_nfnet.data.corpus import load_metadata
    from keras_nfnet.jobs import config as config_lib
    from keras_nfnet.jobs import context
    from keras_nfnet.jobs.finetune import finetune
    from keras_nfnet.jobs.pretrain import pretrain

    for model in models:
        architectures.family(model)  # unknown names fail before any training
    rows = []
    for model in models:
        config = config_lib.override(pretrain_config, {"variant": model})
        pre_dir = storage.join(workdir, "pretrain", model)
        pre = context.read_result(pre_dir) or pretrain(config, pre_dir)
        ft_dir = storage.join(workdir, "finetune", model)
        ft = context.read_result(ft_dir) or finetune(config_lib.override(finetune_config, {"source": pre_dir}),
                                                     ft_dir)
        pre, ft = dict(pre["metrics"], step=pre["step"]), ft["metrics"]
        classes = load_metadata(config.corpus).num_classes
        size = config.image_size or architectures.get_row(model).train_image_size
        rows.append({"family": architectures.family(model), "model": model,
                     "params": architectures.count_params(model, classes),
                     "macs_per_image": architectures.count_macs(model, size, classes),
                     "pretrain_steps": pre["step"], "pretrain_flops": pre["flops"],
                     "pretrain_device_hours": pre["device_hours"], "heldout_loss": pre["heldout_loss"],
                     "finetune_top1": ft["top1"], "finetune_top1_ema": ft["top1_ema"], "finetune_top5": ft["top5"]})
        log(format_table(rows[-1:]).splitlines()[-1])
    storage.makedirs(workdir)
    storage.write_atomic(storage.join(workdir, "comparison.json"), json.dumps(rows, indent=1))
    storage.write_atomic(storage.join(workdir, "comparison.md"), format_table(rows) + "\n")
    return rows


def format_table(rows) -> str:
    lines = ["| family | model | params | MACs/image | pretraining FLOPs | device-hours | held-out loss | "
             "fine-tuned top-1 (EMA) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ema = f" ({r['finetune_top1_ema']:.3f})" if r["finetune_top1_ema"] is not None else ""
        lines.append(f"| {r['family']} | {r['model']} | {r['params']:,} | {r['macs_per_image']:.3g} | "
                     f"{r['pretrain_flops']:.3g} | {r['pretrain_device_hours']:.3g} | {r['heldout_loss']:.4f} | "
                     f"{r['finetune_top1']:.3f}{ema} |")
    return "\n".join(lines)
