"""A tiny NFNet on a small stand-in corpus: minutes on a CPU. The README's demo and the tests use it.

    --config=cpu_tiny --config.corpus=/tmp/corpus --config.epochs=2
"""
from keras_nfnet.jobs import defaults


def get_config(arg=None):
    c = defaults.pretrain()
    c.variant = "tiny"
    c.image_size = 32
    c.eval_image_size = 32
    c.global_batch_size = 16
    c.epochs = 1.0
    c.base_learning_rate = 0.4    # peak 0.025 at batch 16
    c.warmup_epochs = 0.0
    c.weight_decay = 1e-6
    c.agc_clip = 0.04             # small batches tolerate a larger lambda (NFNET_SPEC.md section 3)
    c.strategy = "default"
    c.checkpoint_every_steps = 10
    c.keep_checkpoints = 3
    c.eval_every_steps = 20
    c.log_every_steps = 5
    c.precision = "float32"
    return c
