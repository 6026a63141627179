"""Weight EMA with the NFNet decay warm-up: numpy reference, swapping for evaluation/export, Keras EMA through
the AGC wrapper, MirroredStrategy."""
import keras
import numpy as np
import pytest

from keras_nfnet import compat
from keras_nfnet.agc import AGC
from keras_nfnet.ema import ema_decay, ema_weights
from keras_nfnet.optimizers import CoupledDecaySGD
from tests.test_agc import apply_gradients, mirrored_strategy


def small_model():
    keras.utils.set_random_seed(4)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="hidden"),
                             keras.layers.Dense(3, name="classifier")])


def numbers(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def test_decay_warm_up_formula():
    for t in [0, 1, 5, 100, 10 ** 7]:
        want = min(0.99999, (1 + t) / (10 + t))
        assert float(keras.ops.convert_to_numpy(ema_decay(t))) == pytest.approx(want, rel=1e-6)
    assert float(keras.ops.convert_to_numpy(ema_decay(10 ** 6, 0.9))) == pytest.approx(0.9)


def test_averages_follow_numpy_reference():
    model = small_model()
    variables = model.trainable_variables
    opt = AGC(CoupledDecaySGD(0.3, weight_decay=1e-2, use_ema=True, ema_momentum=0.5), clip_factor=0.05)
    rng = np.random.default_rng(0)
    average = numbers(variables)  # the reference starts at the initial weights
    for t in range(6):
        grads = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
        apply_gradients(opt, [keras.ops.convert_to_tensor(g) for g in grads], variables)
        d = min(0.5, (1 + t) / (10 + t))
        average = [d * a + (1 - d) * w for a, w in zip(average, numbers(variables))]
    stored = compat.ema_averages(opt.inner_optimizer)
    for a, s in zip(average, numbers(stored)):
        np.testing.assert_allclose(s, a, rtol=1e-5, atol=1e-7)
    # The averages differ from the weights, so the swap below is observable.
    assert max(np.max(np.abs(a - w)) for a, w in zip(average, numbers(variables))) > 1e-3

    before = numbers(variables)
    with ema_weights(model, opt):
        for v, a in zip(variables, average):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(v), a, rtol=1e-5, atol=1e-7)
    for v, b in zip(variables, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the JAX trainer writes weights back per epoch")
def test_averages_inside_fit_follow_the_recorded_weights():
    """Inside model.fit (compiled step), the averages follow the weights seen after each step."""
    model = small_model()
    opt = AGC(CoupledDecaySGD(0.3, use_ema=True, ema_momentum=0.8), clip_factor=0.05)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    recorded = [numbers(model.trainable_variables)]
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: recorded.append(numbers(model.trainable_variables)))
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(20, 5)).astype(np.float32), rng.integers(0, 3, size=20)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[record])
    assert len(recorded) == 6
    average = recorded[0]
    for t, weights in enumerate(recorded[1:]):
        d = min(0.8, (1 + t) / (10 + t))
        average = [d * a + (1 - d) * w for a, w in zip(average, weights)]
    for a, s in zip(average, numbers(compat.ema_averages(opt.inner_optimizer))):
        np.testing.assert_allclose(s, a, rtol=1e-5, atol=1e-7)
    # fit ends with the averages in the model (Keras's use_ema behaviour): that is what gets evaluated/exported.
    for v, a in zip(model.trainable_variables, average):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), a, rtol=1e-5, atol=1e-7)


def test_fit_with_swap_ema_weights_through_loss_scale_and_agc():
    """keras.callbacks.SwapEMAWeights finds the averages through LossScaleOptimizer(AGC(...)); at the end of
    fit the model holds the averages (Keras's use_ema behaviour), which is what gets exported."""
    model = small_model()
    opt = keras.optimizers.LossScaleOptimizer(
        AGC(CoupledDecaySGD(0.1, use_ema=True, ema_momentum=0.9), clip_factor=0.05), initial_scale=8.0)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 5)).astype(np.float32), rng.integers(0, 3, size=16)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y),
              callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True)])
    averages = numbers(compat.ema_averages(opt.inner_optimizer.inner_optimizer))
    for v, a in zip(model.trainable_variables, averages):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), a, rtol=1e-6, atol=1e-7)


def test_lr_callback_reaches_the_inner_optimizer():
    model = small_model()
    inner = CoupledDecaySGD(0.1)
    model.compile(optimizer=AGC(inner, clip_factor=0.05), loss=keras.losses.MeanSquaredError())
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(8, 5)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    start = numbers(model.trainable_variables)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.0)])
    assert float(keras.ops.convert_to_numpy(inner.learning_rate)) == 0.0
    assert int(keras.ops.convert_to_numpy(inner.iterations)) == 4
    for v, s in zip(model.trainable_variables, start):  # lr 0: nothing moved although AGC ran
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), s)


def test_ema_weights_needs_averages():
    model = small_model()
    model.compile(optimizer=AGC(CoupledDecaySGD(0.1)), loss="mse")
    with pytest.raises(ValueError, match="use_ema=True"):
        with ema_weights(model):
            pass


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute")
def test_ema_under_mirrored_strategy_equals_one_device():
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(16, 5)).astype(np.float32), rng.integers(0, 3, size=16)
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy()):
        with strategy.scope():
            model = small_model()
            model.compile(optimizer=AGC(CoupledDecaySGD(0.2, use_ema=True, ema_momentum=0.9), clip_factor=0.05),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results.append(numbers(model.trainable_variables))  # the averages, after fit
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-6)
