"""Fine-tuning from a pretraining checkpoint vs training the same architecture from scratch, same budget.

    python benchmarks/finetune_vs_scratch.py --source=/runs/pretrain --corpus=/data/digits --epochs=6 --crop=false

Runs trainers' fine-tuning job twice with one FinetuneConfig, once from `--source` and once from random
initialisation (the baseline, run in the same process), and prints top-1/top-5 (raw and EMA) with the ratio of
each to the baseline. Any other FinetuneConfig field can be set as a flag of the same name.
"""
import dataclasses
import os
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet.finetune import config_from_flags, define_flags, finetune  # noqa: E402
from keras_nfnet import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where the two runs go (default: a temporary directory).")
define_flags()


def main(argv):
    del argv
    config = config_from_flags()
    if not config.source:
        raise app.UsageError("--source (a pretraining workdir or .keras file) is required")
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="ft_vs_scratch_")
    pretrained = finetune(config, os.path.join(root, "finetuned"))
    scratch = finetune(dataclasses.replace(config, source="", from_scratch=True, variant=pretrained["variant"]),
                       os.path.join(root, "scratch"))
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
    cli.run(main)
