"""NFNet model: construction, variable layout, errors, serialization, training, mixed precision.

Backend-agnostic (keras.ops / numpy only): tests/test_models_jax.py runs this file again under KERAS_BACKEND=jax.
"""
import dataclasses
import os

import numpy as np
import pytest
import keras

from keras_nfnet import compat
from keras_nfnet.layers import NFBlock, WSConv2D
from keras_nfnet.models import NFNet
from keras_nfnet.variants import LADDER, VARIANTS, get_variant


def _images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return NFNet("tiny", num_classes=10)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_forward_shapes_any_resolution(tiny):
    # Eager calls: cheap on both backends (a jitted predict costs ~10 s of XLA compilation on JAX/CPU).
    for h, w in [(32, 32), (40, 64)]:  # square and not, not a multiple of the total stride
        out = _np(tiny(np.zeros((2, h, w, 3), np.float32), training=False))
        assert out.shape == (2, 10) and out.dtype == np.float32
        assert np.all(np.isfinite(out))


def test_predict_on_tf_dataset(tiny):
    tf = pytest.importorskip("tensorflow")
    x = _images(5, 48)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(2)
    out = tiny.predict(ds, verbose=0)
    assert out.shape == (5, 10)
    np.testing.assert_allclose(out, _np(tiny(x, training=False)), rtol=1e-5, atol=1e-6)


def test_feature_extraction_outputs():
    x = _images(size=64)
    final = 2 * VARIANTS["tiny"].widths[-1]
    fmap = _np(NFNet("tiny", include_top=False)(x))
    assert fmap.shape == (2, 2, 2, final)  # total stride 32
    avg = _np(NFNet("tiny", include_top=False, pooling="avg")(x))
    mx = _np(NFNet("tiny", include_top=False, pooling="max")(x))
    assert avg.shape == mx.shape == (2, final)


def test_variable_layout(tiny):
    paths = [v.path for v in tiny.trainable_variables]
    convs = [layer for layer in compat.flatten_layers(tiny) if isinstance(layer, WSConv2D)]
    for conv in convs:
        assert sorted(v.name for v in conv.weights) == ["bias", "gain", "kernel"]
    blocks = [layer for layer in tiny.layers if isinstance(layer, NFBlock)]
    assert len(blocks) == sum(VARIANTS["tiny"].depths)
    skip = [p for p in paths if p.endswith("skip_gain")]
    assert len(skip) == len(blocks)  # one scalar per block
    assert all(tuple(b.skip_gain.shape) == () for b in blocks)
    assert [p for p in paths if p.endswith("classifier/kernel")] == ["classifier/kernel"]
    for b in blocks:  # SE: two plain Dense layers
        assert isinstance(b.se.fc0, keras.layers.Dense) and isinstance(b.se.fc1, keras.layers.Dense)
    # Stem: 3 convs with activations, the 4th without; strides 2, 1, 1, 2.
    assert [tiny.get_layer(f"stem_conv{i}").strides for i in range(4)] == [2, 1, 1, 2]
    assert tiny.get_layer("stem_conv3").filters == VARIANTS["tiny"].widths[0] // 2


def test_classifier_init():
    keras.utils.set_random_seed(1)
    model = NFNet("S1", num_classes=1000)
    w = keras.ops.convert_to_numpy(model.get_layer("classifier").kernel)
    b = keras.ops.convert_to_numpy(model.get_layer("classifier").bias)
    assert abs(w.std() - 0.01) < 0.0005 and abs(w.mean()) < 0.0005
    np.testing.assert_array_equal(b, 0.0)


def test_block_schedule_follows_spec():
    model = NFNet("S2", stochastic_depth_rate=0.25)
    blocks = model.blocks
    n = len(blocks)
    row = get_variant("S2")
    expected_std, betas = 1.0, []
    for depth in row.depths:  # NFNET_SPEC.md section 2, written out again
        for b in range(depth):
            betas.append(1 / expected_std)
            expected_std = float(np.sqrt((1.0 if b == 0 else expected_std ** 2) + 0.2 ** 2))
    assert [b.beta for b in blocks] == pytest.approx(betas)
    assert [b.stochastic_depth_rate for b in blocks] == pytest.approx([0.25 * i / n for i in range(n)])
    assert [b.strides for b in blocks] == [1, 2, 1, 2, 1, 1, 2, 1]
    assert [b.use_projection for b in blocks] == [True, True, False, True, False, False, True, False]
    assert all(b.alpha == 0.2 for b in blocks)


def test_dropout_default_and_override():
    assert NFNet("S3").get_layer("dropout").rate == VARIANTS["S3"].dropout_rate
    assert NFNet("S3", dropout_rate=0.5).get_layer("dropout").rate == 0.5
    with pytest.raises(ValueError):
        NFNet("tiny").get_layer("dropout")  # the tiny row has no dropout: no layer


def test_inference_is_deterministic_and_training_is_stochastic():
    model = NFNet("tiny", num_classes=4, dropout_rate=0.5, stochastic_depth_rate=0.5)
    for b in model.blocks:
        b.skip_gain.assign(1.0)
    x = _images(2)
    np.testing.assert_array_equal(_np(model(x, training=False)), _np(model(x, training=False)))
    t1 = _np(model(x, training=True))
    t2 = _np(model(x, training=True))
    assert not np.allclose(t1, t2)


def test_save_load_round_trip_exact(tmp_path):
    model = NFNet("tiny", num_classes=10)
    for b in model.blocks:  # non-trivial weights so every part of the graph matters
        b.skip_gain.assign(0.5)
    x = _images(2, 32)
    want = _np(model(x, training=False))
    path = os.path.join(tmp_path, "tiny.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, NFNet)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(model.weights, loaded.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    np.testing.assert_array_equal(_np(loaded(x, training=False)), want)


def test_custom_variant_row_round_trip(tmp_path):
    row = dataclasses.replace(get_variant("tiny"), name="mine", alpha=0.3, depths=(1, 2, 1, 1))
    model = NFNet(row, num_classes=3, activation="silu", include_top=True)
    x = _images(2)
    path = os.path.join(tmp_path, "mine.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.variant_row == row and loaded.activation == "silu"
    np.testing.assert_array_equal(_np(loaded(x, training=False)), _np(model(x, training=False)))


def test_fit_reduces_loss():
    keras.utils.set_random_seed(2)
    # No dropout or stochastic depth here, so the training loss is the same function as the eval loss.
    model = NFNet("tiny", num_classes=4, stochastic_depth_rate=0.0, dropout_rate=0.0)
    x = _images(16, seed=3)
    y = np.arange(16) % 4
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=16, epochs=30, verbose=0).history["loss"]
    assert history[0] == pytest.approx(np.log(4), rel=0.05)  # classifier init N(0, 0.01): near-uniform logits
    assert np.all(np.isfinite(history)) and history[-1] < 0.8 * history[0], history
    gains = [float(keras.ops.convert_to_numpy(b.skip_gain)) for b in model.blocks]
    assert any(g != 0.0 for g in gains)  # skip gains learn from 0


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_float32_logits(policy):
    keras.utils.set_random_seed(4)
    ref = NFNet("tiny", num_classes=10, dropout_rate=0.0)
    mixed = NFNet("tiny", num_classes=10, dropout_rate=0.0, dtype=policy)
    for b in ref.blocks:
        b.skip_gain.assign(1.0)
    mixed.set_weights(ref.get_weights())
    assert mixed.get_layer("stage0_block0").compute_dtype == policy.split("_")[1]
    assert all(v.dtype == "float32" for v in mixed.weights)
    x = _images(2)
    out = _np(mixed(x, training=False))
    assert out.dtype == np.float32
    want = _np(ref(x, training=False))
    # half precision: ~3 (bf16) / ~4 (fp16) significant digits through ~20 layers
    tol = 0.1 if policy == "mixed_bfloat16" else 0.02
    assert np.abs(out - want).max() < tol * (np.abs(want).max() + 1e-3)


def test_ladder_is_increasing():
    sizes = [NFNet(v, num_classes=10).count_params() for v in LADDER]
    assert sizes == sorted(sizes) and 15_000 < sizes[0] < 30_000 and 800_000 < sizes[-1] < 1_500_000
    assert NFNet("tiny", num_classes=10).count_params() < 10_000


def test_unknown_variant_lists_known():
    with pytest.raises(ValueError, match="F0.*F7\\+.*S3") as err:
        NFNet("F9")
    assert "'F9'" in str(err.value)


def test_resolution_too_small():
    with pytest.raises(ValueError, match="too small.*32"):
        NFNet("tiny", input_shape=(16, 16, 3))
    model = NFNet("tiny")
    with pytest.raises(ValueError, match="too small"):
        model(np.zeros((1, 16, 40, 3), np.float32))


def test_non_rgb_input():
    with pytest.raises(ValueError, match="RGB"):
        NFNet("tiny", input_shape=(None, None, 1))
    model = NFNet("tiny")
    with pytest.raises(ValueError, match="incompatible|RGB"):  # Keras' input-spec check names both shapes
        model(np.zeros((1, 32, 32, 4), np.float32))


def test_bad_options():
    with pytest.raises(ValueError, match="supported activations.*gelu"):
        NFNet("tiny", activation="mish")
    with pytest.raises(ValueError, match="pooling"):
        NFNet("tiny", include_top=False, pooling="sum")
    with pytest.raises(ValueError, match="num_classes"):
        NFNet("tiny", num_classes=0)
    with pytest.raises(ValueError, match="dtype"):
        NFNet("tiny", dtype="float33")
    with pytest.raises(ValueError, match="stochastic_depth_rate"):
        NFNet("tiny", stochastic_depth_rate=1.5)
    with pytest.raises(ValueError, match="group width"):
        dataclasses.replace(get_variant("tiny"), group_width=64)
