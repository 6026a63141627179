"""NFNet vs ViT at equal pretraining compute: pretrain every model with the same trainer, corpus and budget, fine-tune
each on one labelled corpus, and print fine-tuned top-1 against pretraining compute.

    python trainers/compare.py --models=S0,ViT-0,S1,ViT-1 --workdir=/runs/compare \
        --pretrain_config="trainers/configs/sweep_toy_pretrain.py:corpus=/data/synth,epochs=4,base_learning_rate=0.4" \
        --corpus=/data/digits --epochs=5 --image_size=32 --eval_image_size=32

--pretrain_config is a run config (as for trainers/pretrain.py; `variant` is set per model). Every field of
`keras_nfnet.finetune.FinetuneConfig` is a flag of the same name (--corpus is the fine-tuning corpus; --source is
set per model). Re-running the command resumes: finished steps are read back, not redone. The table goes to
<workdir>/comparison.md and comparison.json.
"""
import logging

from absl import flags

from keras_nfnet import cli
from keras_nfnet.finetune import config_from_flags, define_flags
from keras_nfnet.scaling.families import compare_families, format_table

FLAGS = flags.FLAGS
flags.DEFINE_list("models", None, "model names: NFNet variants (S0..S3, F0, ...) and ViT variants (ViT-0..ViT-3)")
flags.DEFINE_string("pretrain_config", None, "pretraining run config, 'file.py:key=value,...' (variant set per model)")
flags.DEFINE_string("workdir", None, "holds pretrain/<model>, finetune/<model> and the comparison table")
flags.mark_flags_as_required(["models", "pretrain_config", "workdir"])
define_flags()


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows = compare_families(FLAGS.models, FLAGS.pretrain_config, config_from_flags(), FLAGS.workdir)
    print(format_table(rows))


if __name__ == "__main__":
    cli.run(main)
