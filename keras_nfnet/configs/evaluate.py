"""The evaluation job's default config: set the model and the corpus.

    nfnet-evaluate --config.model=/runs/ft --config.corpus=/data/digits --workdir=/runs/eval
"""
from keras_nfnet.jobs import defaults


def get_config(arg=None):
    return defaults.evaluate()
