"""Fine-tuning from a pretraining checkpoint vs training the same architecture from scratch, same budget.

    python benchmarks/finetune_vs_scratch.py --config.source=/runs/pretrain --config.corpus=/data/digits \
        --config.epochs=6 --config.crop=false

Runs the fine-tuning job twice with one config (default: the shipped recipe, `--config.<field>=value` overrides),
once from `source` and once from random initialisation (the baseline, run in the same process), and prints
top-1/top-5 (raw and EMA) with the ratio of each to the baseline.
"""
import os
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet.jobs import app as job_app  # noqa: E402
from keras_nfnet.jobs import config as config_lib  # noqa: E402
from keras_nfnet.jobs.finetune import finetune  # noqa: E402

FLAGS = flags.FLAGS
job_app.define_flags("finetune", "Where the two runs go (default: a temporary directory).", workdir_required=False)


def main(argv):
    del argv
    config = FLAGS.config
    if not config.source:
        raise app.UsageError("--config.source (a pretraining workdir or .keras file) is required")
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="ft_vs_scratch_")
    pretrained = finetune(config, os.path.join(root, "finetuned"))["metrics"]
    pretrained["steps"] = int(pretrained["train_images_seen"] // config.global_batch_size)
    scratch = finetune(config_lib.override(config, {"source": "", "from_scratch": True,
                                                    "variant": pretrained["variant"]}),
                       os.path.join(root, "scratch"))["metrics"]
    print(f"\n{pretrained['steps']} steps of {config.global_batch_size} images at {pretrained['image_size']} px, "
          f"evaluated on {pretrained['eval_examples']} images of split {pretrained['eval_split']} at "
          f"{pretrained['eval_image_size']} px, crop fraction {pretrained['crop_fraction']:.4g}; training view: "
          f"{pretrained['training_view']}")
    print(f"{'metric':<10} {'from scratch':>13} {'fine-tuned':>11} {'ratio':>7}")
    for metric in ("top1", "top5", "top1_ema", "top5_ema"):
        if scratch[metric] is None:
            continue
        ratio = pretrained[metric] / scratch[metric] if scratch[metric] else float("inf")
        print(f"{metric:<10} {scratch[metric]:>13.4f} {pretrained[metric]:>11.4f} {ratio:>7.2f}")


if __name__ == "__main__":
    job_app.run(main)
