"""The pretraining config every run of the toy scaling study starts from (see sweep_toy.py).

Small CPU-ladder models at 32 px on the synthetic stand-in corpus, JFT-style recipe ([NF]: crop + flip, no label
smoothing, weight decay 1e-6), no warm-up (budgets of a few hundred steps), a held-out evaluation only at the end.
The sweep sets variant, epochs and base_learning_rate per run.
"""


def get_config(**overrides):
    return dict(
        variant="S0",
        image_size=32,
        eval_image_size=32,
        global_batch_size=32,
        epochs=1.0,
        base_learning_rate=0.4,    # per 256 examples: peak = 0.4 * 32 / 256 = 0.05
        warmup_epochs=0.0,
        weight_decay=1e-6,
        agc_clip=0.04,             # small batches tolerate a larger lambda (NFNET_SPEC.md section 3)
        label_smoothing=0.0,
        strategy="default",
        precision="float32",
        checkpoint_every_steps=100,
        keep_checkpoints=1,
        eval_every_steps=100000,   # held-out loss once, at the end (evaluation time is not training compute)
        log_every_steps=20,
        verbose=2,
    )
