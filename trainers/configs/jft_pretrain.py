"""The JFT-style large-scale pretraining recipe of "ConvNets Match Vision Transformers at Scale"
(NFNET_SPEC.md section 4): SGD with Nesterov momentum 0.9 + AGC 0.01, batch 4096, train at 224 px and evaluate
the held-out loss at 256 px, crop + flip only, no EMA, weight decay 1e-6, a cosine schedule over the epoch budget.

    --config trainers/configs/jft_pretrain.py:variant=F3+,epochs=0.5,corpus=/data/jft,strategy=tpu

variant: F0, F1, F3, F3+, F7 or F7+ (the paper's models). epochs: 0.25, 0.5, 1, 2, 4 or 8 (the paper's budgets).
base_learning_rate is per 256 examples: the paper's best peak rate at small budgets is ~1.6 at batch 4096
(base 0.1); it was tuned per budget on a factor-2 grid (trainers/sweep), falling as the budget grows.
"""

PAPER_VARIANTS = ("F0", "F1", "F3", "F3+", "F7", "F7+")
PAPER_BUDGETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def get_config(variant="F0", **overrides):
    return dict(
        variant=variant,
        image_size=224,
        eval_image_size=256,
        stochastic_depth_rate=0.0,
        dropout_rate=0.0,
        crop=True,
        flip=True,
        global_batch_size=4096,
        epochs=1.0,
        base_learning_rate=0.1,   # peak 1.6 at batch 4096
        warmup_epochs=0.0,
        momentum=0.9,
        weight_decay=1e-6,
        agc_clip=0.01,
        label_smoothing=0.0,
        strategy="tpu",
        precision="auto",         # bf16 activations, fp32 params and logits
        steps_per_execution=100,
        jit_compile=True,
        checkpoint_every_steps=1000,
        keep_checkpoints=3,
        eval_every_steps=5000,
        log_every_steps=100,
    )
