"""Each workaround in keras_nfnet.training.keras_workarounds: stock Keras fails without it (so the patch is still
needed: when one of these starts passing, upstream fixed it and the workaround can go), and with it training
under MirroredStrategy on two logical CPU devices matches a single-device run.

The multi-worker workarounds need two processes: tests/test_training_multiworker.py exercises them."""
import numpy as np
import pytest
import tensorflow as tf

import keras
from keras_nfnet.training import keras_workarounds as kw
from keras_nfnet.training.strategy import make_strategy


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, 64)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True).repeat()


def _train(strategy, steps_per_execution=1, jit_compile=False, patch=True):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    applied = kw.apply(model, strategy) if patch else []
    history = model.fit(_data(), epochs=2, steps_per_epoch=4, verbose=0)
    return [w.numpy() for w in model.weights], int(model.optimizer.iterations.numpy()), history, applied


@pytest.fixture(scope="module")
def reference():
    return _train(tf.distribute.get_strategy())


def _mirrored():
    strategy = make_strategy("mirrored", num_cpu_devices=2)
    assert strategy.num_replicas_in_sync == 2
    return strategy


def test_stock_keras_fails_with_steps_per_execution_under_mirrored():
    with pytest.raises(tf.errors.InvalidArgumentError, match="Placeholder"):
        _train(_mirrored(), steps_per_execution=2, patch=False)


def test_step_loop_matches_single_device(reference):
    want, want_iterations, want_history, _ = reference
    got, iterations, history, applied = _train(_mirrored(), steps_per_execution=2)
    assert applied == [kw.STEP_LOOP]
    assert iterations == want_iterations == 8
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"], want_history.history["loss"], rtol=1e-5)
    keras.utils.set_random_seed(0)
    initial = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)])
    assert np.abs(got[0] - initial.weights[0].numpy()).max() > 1e-3  # the weights did train


def test_stock_keras_fails_with_jit_on_logical_cpus():
    with pytest.raises(tf.errors.InvalidArgumentError, match="resource"):
        _train(_mirrored(), jit_compile=True, patch=False)


def test_jit_request_is_resolved_and_training_matches(reference):
    strategy = _mirrored()
    assert kw.resolve_jit_compile(strategy, True) is False
    assert kw.resolve_jit_compile(tf.distribute.get_strategy(), True) is True
    assert kw.resolve_jit_compile(strategy, "auto") == "auto"
    got, _, _, _ = _train(strategy, jit_compile=kw.resolve_jit_compile(strategy, True))
    for a, b in zip(got, reference[0]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_needed_lists_only_what_a_strategy_needs():
    assert kw.needed(tf.distribute.get_strategy(), 4) == []
    assert kw.needed(_mirrored(), 1) == []
    assert kw.needed(_mirrored(), 2) == [kw.STEP_LOOP]
    for name in (kw.STEP_LOOP, kw.SYMBOLIC_BUILD, kw.JIT_ON_LOGICAL_CPUS):
        assert "keras" in kw.UPSTREAM[name] or "xla" in kw.UPSTREAM[name]


def test_apply_needs_a_compiled_model():
    with pytest.raises(ValueError, match="compile"):
        kw.apply(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), _mirrored())
