"""The pretraining config every run of the toy scaling study starts from (see sweep_toy.py).

Small CPU-ladder models at 32 px on the synthetic stand-in corpus, JFT-style recipe ([NF]: crop + flip, no label
smoothing, weight decay 1e-6), no warm-up (budgets of a few hundred steps), a held-out evaluation only at the end.
The sweep sets variant, epochs and base_learning_rate per run.

`sweep_toy_pretrain:vit` is the ViT baseline's recipe on the same data and schedule: AdamW with decoupled weight
decay 0.05 and global-norm clipping 1 (Dosovitskiy et al. 2021; AGC is an NFNet tool), no dropout.
"""
from keras_nfnet.jobs import defaults


def get_config(arg=None):
    if arg not in (None, "", "vit"):
        raise ValueError(f"sweep_toy_pretrain takes no argument or 'vit'; got {arg!r}")
    c = defaults.pretrain()
    c.variant = "S0"
    c.image_size = 32
    c.eval_image_size = 32
    c.global_batch_size = 64
    c.epochs = 1.0
    c.base_learning_rate = 0.4     # per 256 examples: peak = 0.4 * 64 / 256 = 0.1
    c.warmup_epochs = 0.0
    c.weight_decay = 1e-6
    c.agc_clip = 0.04              # small batches tolerate a larger lambda (NFNET_SPEC.md section 3)
    c.label_smoothing = 0.0
    c.strategy = "default"
    c.precision = "float32"
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 1
    c.eval_every_steps = 100000    # held-out loss once, at the end (evaluation time is not training compute)
    c.log_every_steps = 100
    c.verbose = 2
    if arg == "vit":
        c.variant = "ViT-0"
        c.optimizer = "adamw"
        c.base_learning_rate = 4e-3  # peak 1e-3 at batch 64
        c.weight_decay = 0.05
        c.agc_clip = 0.0
    return c
