"""Warmup + cosine schedule against the formula written out in numpy, and the published peak learning rate."""
import math

import keras
import numpy as np
import pytest

from keras_nfnet.schedules import peak_learning_rate, warmup_cosine


def reference(step, peak, total, warmup):
    if step < warmup:
        return peak * step / warmup
    if step >= total:
        return 0.0
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_peak_is_base_times_batch_over_256():
    assert peak_learning_rate(0.1, 4096) == pytest.approx(1.6)  # the ImageNet recipe (NFNET_SPEC section 4)
    assert peak_learning_rate(0.1, 256) == pytest.approx(0.1)
    assert peak_learning_rate(0.4, 128, reference_batch_size=512) == pytest.approx(0.1)


@pytest.mark.parametrize("warmup", [0, 5])
def test_warmup_then_cosine_to_zero(warmup):
    total = 40
    schedule = warmup_cosine(0.1, 1024, total_steps=total, warmup_steps=warmup)
    steps = list(range(0, total + 5))
    got = [float(keras.ops.convert_to_numpy(schedule(s))) for s in steps]
    want = [reference(s, 0.4, total, warmup) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert got[0] == (0.0 if warmup else pytest.approx(0.4))
    assert max(got) == pytest.approx(0.4)
    assert got[total] == pytest.approx(0.0, abs=1e-7) and got[-1] == pytest.approx(0.0, abs=1e-7)


def test_schedule_drives_the_optimizer_and_serializes():
    schedule = warmup_cosine(0.1, 512, total_steps=10, warmup_steps=2)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    for s in range(12):
        assert float(keras.ops.convert_to_numpy(clone(s))) == pytest.approx(reference(s, 0.2, 10, 2), abs=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(base_learning_rate=0.0), "base_learning_rate"),
    (dict(base_learning_rate=float("nan")), "base_learning_rate"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=32.5), "batch_size"),
    (dict(total_steps=0), "total_steps"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(warmup_steps=100), "smaller than total_steps"),
])
def test_bad_arguments(kwargs, match):
    args = dict(base_learning_rate=0.1, batch_size=256, total_steps=100, warmup_steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        warmup_cosine(**args)
