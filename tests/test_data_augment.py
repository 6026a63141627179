"""Stateless RandAugment against numpy formulas of its ops and its choice rule (op or identity, uniformly)."""
import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet.data import augment


def _image(seed=0, size=16):
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _run(image, seed, **kw):
    return augment.rand_augment(tf.constant(image), tf.constant([seed, 7], tf.int64), **kw).numpy()


def test_each_layer_applies_the_op_or_the_identity_with_equal_chance():
    x = _image()
    one = [_run(x, s, num_layers=1, ops=("Invert",)) for s in range(64)]
    inverted = [np.array_equal(y, 255 - x) for y in one]
    assert all(inv or np.array_equal(y, x) for inv, y in zip(inverted, one))
    assert 20 <= sum(inverted) <= 44  # Binomial(64, 1/2): outside this range has probability < 0.5%
    # Two layers: inverting twice is the identity, so the result is inverted iff exactly one layer picked Invert.
    two = [_run(x, s, num_layers=2, ops=("Invert",)) for s in range(64)]
    assert all(np.array_equal(y, 255 - x) or np.array_equal(y, x) for y in two)
    assert 20 <= sum(np.array_equal(y, 255 - x) for y in two) <= 44
    # Posterize is idempotent: two layers leave the image unchanged only if both pick the identity (p = 1/4).
    kept = sum(np.array_equal(_run(x, s, num_layers=2, ops=("Posterize",)), x) for s in range(64))
    assert 5 <= kept <= 27  # Binomial(64, 1/4); one layer (p = 1/2) would give ~32


def test_ops_match_numpy_formulas_at_the_given_magnitude():
    x = _image(1)
    # Posterize at magnitude 10 keeps int(10 / 10 * 4) = 4 high bits; Solarize at magnitude 5 inverts pixels >= 128.
    for ops, magnitude, expected in [(("Posterize",), 10, x & 0xF0),
                                     (("Solarize",), 5, np.where(x < 128, x, 255 - x))]:
        outs = [_run(x, s, num_layers=1, magnitude=magnitude, ops=ops) for s in range(16)]
        applied = [np.array_equal(y, expected) for y in outs]
        assert any(applied) and all(a or np.array_equal(y, x) for a, y in zip(applied, outs)), ops


def test_same_seed_same_pixels_other_seed_other_pixels_and_dtype_kept():
    x = _image(2)
    a = _run(x, 3, num_layers=2, magnitude=9)
    assert np.array_equal(a, _run(x, 3, num_layers=2, magnitude=9))
    assert any(not np.array_equal(a, _run(x, s, num_layers=2, magnitude=9)) for s in range(4, 8))
    out = augment.rand_augment(tf.constant(x, tf.float32), tf.constant([3, 7], tf.int64), num_layers=2, magnitude=9)
    assert out.dtype == tf.float32 and np.array_equal(out.numpy(), a.astype(np.float32))
    assert np.array_equal(_run(x, 3, num_layers=0), x)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown RandAugment ops"):
        _run(_image(), 0, ops=("Blur",))
    with pytest.raises(ValueError, match="num_layers must be >= 0"):
        _run(_image(), 0, num_layers=-1)
