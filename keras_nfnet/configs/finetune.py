"""The NFNet fine-tuning recipe ([NF]'s JFT fine-tuning scaled to small batches; NFNET_SPEC.md section 4): the
fine-tuning job's default config. Set at least the corpus and the source (or from_scratch and a variant):

    nfnet-finetune --config.source=/runs/pretrain --config.corpus=/data/digits --workdir=/runs/ft
"""
from keras_nfnet.jobs import defaults


def get_config(arg=None):
    return defaults.finetune()
