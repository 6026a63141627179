"""Fine-tune a pretrained NFNet on a labelled corpus and report top-1/top-5 (raw and EMA weights).

    python trainers/finetune.py --source=/runs/pretrain --corpus=/data/digits --workdir=/runs/ft \
        --image_size=48 --eval_image_size=64 --epochs=5 --sam_rho=0.05 --repeats=2

Every field of `keras_nfnet.finetune.FinetuneConfig` is a flag of the same name (defaults: the NFNet fine-tuning
recipe). --source is a pretraining workdir, a checkpoint directory, a .keras file or a preset directory (e.g. released
weights converted by trainers/convert_weights.py). Without --source the same architecture (--variant) is trained
from scratch with the same budget.
"""
import logging

from absl import app, flags

from keras_nfnet.finetune import config_from_flags, define_flags, finetune
from keras_nfnet import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for results.json, model.keras, model_ema.keras, TensorBoard logs.")
flags.mark_flag_as_required("workdir")
define_flags()


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    finetune(config_from_flags(), FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
