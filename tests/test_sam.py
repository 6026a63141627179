"""SAM train step: numpy reference (with and without AGC) and MirroredStrategy == one device."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet.agc import AGC
from keras_nfnet.sam import enable_sam

RHO = 0.3
LR = 0.1


def _data(n=8, d_in=5, d_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d_in)).astype("float32"), rng.normal(size=(n, d_out)).astype("float32")


def _linear(d_in=5, d_out=3, seed=1):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((d_in,))
    layer = keras.layers.Dense(d_out, name="dense")
    model = keras.Model(inputs, layer(inputs))
    layer.kernel.assign(rng.normal(size=(d_in, d_out)).astype("float32"))
    layer.bias.assign(rng.normal(size=(d_out,)).astype("float32") * 0.1)
    return model


def _grad(w, b, x, y):
    """Gradient of keras' mean squared error (mean over all elements) of x @ w + b."""
    residual = x @ w + b - y
    scale = 2.0 / residual.size
    return scale * x.T @ residual, scale * residual.sum(axis=0)


def _agc(g, p, clip, axis):
    """Numpy AGC (NFNET_SPEC section 3) with unit norms over `axis` (None = whole tensor)."""
    keep = axis is not None
    p_norm = np.maximum(np.sqrt((p ** 2).sum(axis=axis, keepdims=keep)), 1e-3)
    g_norm = np.sqrt((g ** 2).sum(axis=axis, keepdims=keep))
    clipped = g * clip * p_norm / np.maximum(g_norm, 1e-6)
    return np.where(g_norm / p_norm > clip, clipped, g)


def _numpy_sam(w, b, x, y, steps, clip=None):
    w, b = w.astype(np.float64), b.astype(np.float64)
    x, y = x.astype(np.float64), y.astype(np.float64)
    for _ in range(steps):
        gw, gb = _grad(w, b, x, y)
        norm = np.sqrt((gw ** 2).sum() + (gb ** 2).sum())
        gw, gb = _grad(w + RHO * gw / norm, b + RHO * gb / norm, x, y)
        if clip is not None:
            gw, gb = _agc(gw, w, clip, 0), _agc(gb, b, clip, None)
        w, b = w - LR * gw, b - LR * gb
    return w, b


@pytest.mark.parametrize("clip", [None, 0.05])
def test_matches_numpy_reference(clip):
    x, y = _data()
    model = _linear()
    w0, b0 = [v.numpy() for v in model.trainable_variables]
    optimizer = keras.optimizers.SGD(LR) if clip is None else AGC(keras.optimizers.SGD(LR), clip_factor=clip,
                                                                     exclude=None)
    model.compile(optimizer=optimizer, loss="mse")
    enable_sam(model, rho=RHO)
    model.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    w, b = _numpy_sam(w0, b0, x, y, steps=3, clip=clip)
    np.testing.assert_allclose(model.trainable_variables[0].numpy(), w, atol=2e-6)
    np.testing.assert_allclose(model.trainable_variables[1].numpy(), b, atol=2e-6)
    if clip is not None:  # clipping was really active, so the comparison covers the composition
        gw, _ = _grad(w0, b0, x, y)
        assert (np.sqrt((gw ** 2).sum(0)) / np.sqrt((w0 ** 2).sum(0)) > clip).all()
    # The reference itself is not plain gradient descent: the ascent step changes the update.
    plain_w = w0 - LR * _grad(w0, b0, x, y)[0]
    assert np.abs(_numpy_sam(w0, b0, x, y, 1)[0] - plain_w).max() > 1e-3


def test_reports_loss_at_unperturbed_weights():
    x, y = _data()
    model = _linear()
    w0, b0 = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    enable_sam(model, rho=RHO)
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    expected = np.mean((x @ w0 + b0 - y) ** 2)
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)


def _conv_model(num_classes=4):
    """A small conv net with an NFNet-style head name ("classifier": AGC leaves its kernel unclipped)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="gelu", name="conv")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="gelu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="classifier")(x))


def _recipe_run(strategy, steps=3, reduction="global"):
    """SAM + AGC + coupled-decay Nesterov SGD with warmup-cosine: the NFNet fine-tuning optimiser."""
    from keras_nfnet.optimizers import nfnet_optimizer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 4, size=8), 4)
    with strategy.scope():
        model = _conv_model()
        optimizer = nfnet_optimizer(base_learning_rate=2.0, batch_size=8, total_steps=steps + 1, clip_factor=0.02,
                                    weight_decay=1e-4)
        model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        enable_sam(model, rho=0.05, reduction=reduction)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return [v.numpy() for v in model.trainable_variables], model.optimizer


def test_sam_agc_mirrored_equals_one_device():
    initial = [v.numpy() for v in _conv_model().trainable_variables]
    one, optimizer = _recipe_run(tf.distribute.get_strategy())
    assert float(optimizer.metrics()["agc/clipped_fraction"]) > 0  # AGC was really clipping
    assert max(np.abs(a - b).max() for a, b in zip(one, initial)) > 1e-3  # training happened
    mirrored, _ = _recipe_run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    for a, b in zip(one, mirrored):
        np.testing.assert_allclose(a, b, atol=2e-6)
    # Per-replica ("local") perturbation is a different update: the global reduction is what makes them equal.
    local, _ = _recipe_run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), reduction="local")
    assert max(np.abs(a - b).max() for a, b in zip(one, local)) > 1e-5


def test_bad_arguments():
    model = _linear()
    with pytest.raises(ValueError, match="compiled model"):
        enable_sam(model)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="rho must be a number > 0"):
        enable_sam(model, rho=0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        enable_sam(model, reduction="mean")
