"""Learning-rate schedule of the NFNet recipe: linear warmup from 0 to the peak, then cosine decay to 0.

Peak = base_learning_rate * batch_size / 256 (0.1 * 4096 / 256 = 1.6 for ImageNet). Keras's `CosineDecay`
already has exactly this shape (`initial_learning_rate=0`, `warmup_target=peak`, `warmup_steps`,
`decay_steps = total - warmup`, `alpha=0`), so this module only does the arithmetic and the argument checks:

    lr(t) = peak * t / warmup                                        for t < warmup
          = peak * 0.5 * (1 + cos(pi * (t - warmup) / (total - warmup)))   for warmup <= t <= total
          = 0                                                        after total
"""
import math
import numbers

import keras

REFERENCE_BATCH_SIZE = 256


def peak_learning_rate(base_learning_rate, batch_size, reference_batch_size=REFERENCE_BATCH_SIZE):
    """base_learning_rate * batch_size / reference_batch_size (the linear scaling rule of the recipe)."""
    _check_number("base_learning_rate", base_learning_rate, minimum=0.0, strict=True)
    _check_int("batch_size", batch_size, minimum=1)
    _check_int("reference_batch_size", reference_batch_size, minimum=1)
    return float(base_learning_rate) * batch_size / reference_batch_size


def warmup_cosine(base_learning_rate, batch_size, total_steps, warmup_steps=0,
                  reference_batch_size=REFERENCE_BATCH_SIZE):
    """A `keras.optimizers.schedules.CosineDecay` with linear warmup, peak = base_lr * batch / 256, ending at 0.

    Args:
        base_learning_rate: learning rate per 256 examples (0.1 for NFNets on ImageNet).
        batch_size: global batch size (all replicas, all hosts).
        total_steps: optimizer steps in the whole run, warmup included; the rate reaches 0 there.
        warmup_steps: steps of linear warmup from 0 (5 epochs of steps in the ImageNet recipe), < total_steps.
    """
    peak = peak_learning_rate(base_learning_rate, batch_size, reference_batch_size)
    _check_int("total_steps", total_steps, minimum=1)
    _check_int("warmup_steps", warmup_steps, minimum=0)
    if warmup_steps >= total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps}), so that some "
            "steps are left for the cosine decay."
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=int(total_steps - warmup_steps),
        alpha=0.0,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=int(warmup_steps),
        name="warmup_cosine",
    )


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; received {name}={value!r}.")


def _check_number(name, value, minimum, strict):
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum}; received {name}={value!r}.")
