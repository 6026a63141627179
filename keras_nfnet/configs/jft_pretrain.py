"""The JFT-style large-scale pretraining recipe of "ConvNets Match Vision Transformers at Scale"
(NFNET_SPEC.md section 4): SGD with Nesterov momentum 0.9 + AGC 0.01, batch 4096, train at 224 px and evaluate
the held-out loss at 256 px, crop + flip only, no EMA, weight decay 1e-6, a cosine schedule over the epoch budget.

    --config=jft_pretrain:F3+ --config.epochs=0.5 --config.corpus=gs://bucket/jft

arg (after ':'): the variant, F0, F1, F3, F3+, F7 or F7+ (the paper's models; default F0). epochs: 0.25, 0.5, 1, 2,
4 or 8 (the paper's budgets). base_learning_rate is per 256 examples: the paper's best peak rate at small budgets
is ~1.6 at batch 4096 (base 0.1); it was tuned per budget on a factor-2 grid (the sweep job), falling as the
budget grows.
"""
from keras_nfnet.jobs import defaults

PAPER_VARIANTS = ("F0", "F1", "F3", "F3+", "F7", "F7+")
PAPER_BUDGETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def get_config(arg=None):
    c = defaults.pretrain()
    c.variant = arg or "F0"
    c.image_size = 224
    c.eval_image_size = 256
    c.stochastic_depth_rate = 0.0
    c.dropout_rate = 0.0
    c.crop = True
    c.flip = True
    c.global_batch_size = 4096
    c.epochs = 1.0
    c.base_learning_rate = 0.1    # peak 1.6 at batch 4096
    c.warmup_epochs = 0.0
    c.momentum = 0.9
    c.weight_decay = 1e-6
    c.agc_clip = 0.01
    c.label_smoothing = 0.0
    c.strategy = "tpu"
    c.precision = "auto"          # bf16 activations, fp32 params and logits
    c.steps_per_execution = 100
    c.jit_compile = True
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.eval_every_steps = 5000
    c.log_every_steps = 100
    return c
