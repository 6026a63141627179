"""A tiny NFNet on a small stand-in corpus: minutes on a CPU. The README's demo and the tests use it.

    --config trainers/configs/cpu_tiny.py:corpus=/tmp/corpus,epochs=2
"""


def get_config(**overrides):
    return dict(
        variant="tiny",
        image_size=32,
        eval_image_size=32,
        global_batch_size=16,
        epochs=1.0,
        base_learning_rate=0.4,   # peak 0.025 at batch 16
        warmup_epochs=0.0,
        weight_decay=1e-6,
        agc_clip=0.04,            # small batches tolerate a larger lambda (NFNET_SPEC.md section 3)
        strategy="default",
        checkpoint_every_steps=10,
        keep_checkpoints=3,
        eval_every_steps=20,
        log_every_steps=5,
        precision="float32",
    )
