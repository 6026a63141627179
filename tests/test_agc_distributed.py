"""AGC under MirroredStrategy over two logical CPU devices equals one device (TensorFlow backend only).

conftest.py gives every test process two logical CPU devices. Each run trains a few steps of model.fit with the
same data and initial weights; AGC must clip the gradient summed over both replicas.
"""
import contextlib

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.distribute tests need the TensorFlow backend", allow_module_level=True)

import tensorflow as tf  # noqa: E402

import keras_nfnet.agc as agc_module  # noqa: E402
from keras_nfnet import compat  # noqa: E402
from keras_nfnet.agc import AGC  # noqa: E402
from keras_nfnet.optimizers import CoupledDecaySGD  # noqa: E402
from tests.test_agc import mirrored_strategy  # noqa: E402

STEPS, BATCH = 3, 16


def small_convnet():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Conv2D(8, 3, groups=2, activation="relu", name="grouped")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4, name="classifier")(x)
    return keras.Model(inp, out)


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=STEPS * BATCH)
    return x, y


def initial_weights():
    keras.utils.set_random_seed(0)
    return small_convnet().get_weights()


def train(strategy, make_optimizer, dtype_policy="float32"):
    """Train STEPS steps of model.fit; returns (weights, optimizer) after training."""
    x, y = data()
    weights = initial_weights()
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        with strategy.scope():
            model = small_convnet()
            model.set_weights(weights)
            model.compile(optimizer=make_optimizer(),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return [keras.ops.convert_to_numpy(w) for w in model.trainable_weights], model.optimizer


def agc_sgd():
    # clip_factor 0.1 clips about a third of the units here: both branches of the formula are exercised.
    return AGC(CoupledDecaySGD(0.5, weight_decay=1e-3), clip_factor=0.1)


def mirrored():
    return mirrored_strategy()


def max_difference(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


@pytest.fixture(scope="module")
def single_device_run():
    return train(tf.distribute.get_strategy(), agc_sgd)


def test_mirrored_equals_single_device_while_clipping(single_device_run):
    reference, single_opt = single_device_run
    weights, opt = train(mirrored(), agc_sgd)
    assert compat.optimizer_strategy(opt).num_replicas_in_sync == 2
    fraction = float(opt.clipped_fraction.numpy())
    assert 0 < fraction < 1, "the test must exercise clipping (and leaving units alone)"
    np.testing.assert_allclose(fraction, float(single_opt.clipped_fraction.numpy()), rtol=1e-6)
    np.testing.assert_allclose(float(opt.grad_norm.numpy()), float(single_opt.grad_norm.numpy()), rtol=1e-5)
    assert max_difference(weights, reference) < 1e-5
    assert int(opt.iterations.numpy()) == STEPS


def test_clipping_each_replica_would_differ(single_device_run, monkeypatch):
    """If AGC clipped each replica's partial gradient (what a plain Keras clip in apply() does), the result
    differs from one device by far more than the tolerance above."""
    reference, _ = single_device_run
    monkeypatch.setattr(agc_module, "_replica_context_to_sum", lambda: None)
    weights, opt = train(mirrored(), agc_sgd)
    assert float(opt.clipped_fraction.numpy()) > 0
    assert max_difference(weights, reference) > 1e-3


def test_summing_twice_would_differ(single_device_run, monkeypatch):
    """If the inner optimizer summed the already-summed gradients again, the step would double."""
    reference, _ = single_device_run
    monkeypatch.setattr(agc_module, "_summed_scope", contextlib.nullcontext)
    weights, _ = train(mirrored(), agc_sgd)
    assert max_difference(weights, reference) > 1e-3


def test_loss_scale_optimizer_unscales_before_agc(single_device_run):
    """LossScaleOptimizer(AGC(...)) with mixed_float16 under MirroredStrategy: AGC sees unscaled gradients."""
    _, fp32_opt = single_device_run

    def scaled():
        return keras.optimizers.LossScaleOptimizer(agc_sgd(), initial_scale=2.0 ** 10)

    reference, _ = train(tf.distribute.get_strategy(), scaled, dtype_policy="mixed_float16")
    weights, opt = train(mirrored(), scaled, dtype_policy="mixed_float16")
    agc = opt.inner_optimizer
    assert isinstance(agc, AGC) and float(agc.clipped_fraction.numpy()) > 0
    # A still-scaled gradient would report a norm 1024x larger; float16 activations explain ~0.2%.
    np.testing.assert_allclose(float(agc.grad_norm.numpy()), float(fp32_opt.grad_norm.numpy()), rtol=2e-2)
    # float16 rounding differs between one device and two (~1.5e-3 measured); clipping per replica would be
    # off by ~3.6e-2 on this data.
    assert max_difference(weights, reference) < 5e-3
    assert int(opt.iterations.numpy()) == STEPS


def test_custom_loop_with_strategy_run_equals_single_device(single_device_run):
    """The same all-reduce path without model.fit (what a hand-written TPU/multi-worker loop uses)."""
    reference, _ = single_device_run
    strategy = mirrored()
    x, y = data()
    with strategy.scope():
        model = small_convnet()
        model.set_weights(initial_weights())
        opt = agc_sgd()
        opt.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function
    def step(xb, yb):
        def replica_step(xr, yr):
            with tf.GradientTape() as tape:
                loss = loss_fn(yr, model(xr, training=True)) / BATCH
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        strategy.run(replica_step, args=(xb, yb))

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    for xb, yb in strategy.experimental_distribute_dataset(dataset):
        step(xb, yb)
    weights = [w.numpy() for w in model.trainable_weights]
    assert max_difference(weights, reference) < 1e-5


def test_inner_optimizer_from_another_strategy_is_refused():
    outside = CoupledDecaySGD(0.1)
    with mirrored().scope():
        with pytest.raises(ValueError, match="strategy.scope"):
            AGC(outside)


def test_xla_and_steps_per_execution_match_the_plain_step(single_device_run):
    """The step TPUStrategy compiles (XLA, several steps per execution) gives the same update, on one device
    (no TPU here)."""
    reference, single_opt = single_device_run
    x, y = data()
    with tf.distribute.get_strategy().scope():
        model = small_convnet()
        model.set_weights(initial_weights())
        model.compile(optimizer=agc_sgd(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=True, steps_per_execution=STEPS)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    weights = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert max_difference(weights, reference) < 1e-5
    np.testing.assert_allclose(float(model.optimizer.clipped_fraction.numpy()),
                               float(single_opt.clipped_fraction.numpy()), rtol=1e-6)
