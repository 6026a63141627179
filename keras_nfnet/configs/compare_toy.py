"""The toy study's NFNet-vs-ViT comparison (docs/toy_study/README.md): the best-LR run of every model of both
sweeps at two budgets, each fine-tuned on scikit-learn's real handwritten digits at 32 px.

    python datasets/make_digits.py --out /tmp/nfnet_toy/digits
    nfnet-compare --config=compare_toy --workdir=/tmp/nfnet_toy/compare

A short fine-tune (3 epochs of the 1,347 training digits) so that what pretraining learned still shows; the
digits fill the frame and a mirrored digit is another digit, so no Inception crop and no flip.
"""
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs import defaults


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"compare_toy takes no argument; got {arg!r}")
    c = defaults.compare()
    c.sweeps = ("/tmp/nfnet_toy/nfnet", "/tmp/nfnet_toy/vit")
    c.budgets = (0.5, 2.0)
    c.pretrain = config_lib.load("sweep_toy_pretrain")  # for --config.models=...: the study's NFNet recipe
    c.finetune.update(corpus="/tmp/nfnet_toy/digits", image_size=32, epochs=3.0, global_batch_size=32, crop=False,
                      flip=False, base_learning_rate=0.8, agc_clip=0.04, warmup_epochs=0.5, sam_rho=0.0, verbose=0)
    return c
