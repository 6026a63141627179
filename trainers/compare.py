"""NFNet vs ViT at equal pretraining compute: pretrain every model with the same job, corpus and budget, fine-tune
each on one labelled corpus, and print fine-tuned top-1 against pretraining compute.

    python trainers/compare.py --models=S0,ViT-0,S1,ViT-1 --workdir=/runs/compare \
        --pretrain_config=sweep_toy_pretrain --pretrain_config.corpus=/data/synth --pretrain_config.epochs=4 \
        --finetune_config.corpus=/data/digits --finetune_config.epochs=5 --finetune_config.image_size=32

--pretrain_config is a pretraining config (a file or a shipped config's name; `variant` is set per model) and
--finetune_config a fine-tuning config (default: the shipped recipe; `source` is set per model), both with
--<flag>.<field>=value overrides. Re-running the command resumes: finished steps are read back, not redone. The
table goes to <workdir>/comparison.md and comparison.json.
"""
import logging
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet.jobs import app  # noqa: E402
from keras_nfnet.scaling.families import compare_families, format_table  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", None, "model names: NFNet variants (S0..S3, F0, ...) and ViT variants (ViT-0..ViT-3)")
flags.DEFINE_string("workdir", None, "holds pretrain/<model>, finetune/<model> and the comparison table")
flags.mark_flags_as_required(["models", "workdir"])
app.define_config_flag("pretrain_config", None, "pretraining config (variant set per model)")
app.define_config_flag("finetune_config", "finetune", "fine-tuning config (source set per model)")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows = compare_families(FLAGS.models, FLAGS.pretrain_config, FLAGS.finetune_config, FLAGS.workdir)
    print(format_table(rows))


if __name__ == "__main__":
    app.run(main)
