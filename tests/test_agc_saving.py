"""AGC saves and restores with the model (.keras and .weights.h5), inner optimizer state and iterations included.

Backend-agnostic: tests/test_agc_jax.py runs this file again under KERAS_BACKEND=jax.
"""
import keras
import numpy as np

from keras_nfnet.agc import AGC
from keras_nfnet.optimizers import CoupledDecaySGD
from keras_nfnet.schedules import warmup_cosine


def model_and_data():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, name="classifier"),
    ])
    rng = np.random.default_rng(3)
    return model, rng.normal(size=(8, 6, 6, 2)).astype(np.float32), rng.integers(0, 3, size=8)


def make_optimizer():
    sgd = CoupledDecaySGD(warmup_cosine(0.1, 256, total_steps=20, warmup_steps=2), weight_decay=1e-3,
                          use_ema=True, ema_momentum=0.999)
    return AGC(sgd, clip_factor=0.05, exclude=r"classifier/kernel$")


def compile_(model, optimizer):
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def state(optimizer):
    return [keras.ops.convert_to_numpy(v) for v in optimizer.variables]


def assert_same_state(a, b):
    assert len(a.variables) == len(b.variables)
    for u, v, x, y in zip(a.variables, b.variables, state(a), state(b)):
        np.testing.assert_array_equal(x, y, err_msg=f"{u.path} vs {v.path}")


def trained():
    model, x, y = model_and_data()
    compile_(model, make_optimizer())
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # 2 steps
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    # Momenta are non-zero, so restoring zeros would be caught.
    assert any(np.abs(s).sum() > 0 for s, v in zip(state(model.optimizer), model.optimizer.variables)
               if "momentum" in v.path)
    return model, x, y


def test_keras_file_round_trip(tmp_path):
    model, x, y = trained()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, AGC)
    inner = loaded.optimizer.inner_optimizer
    assert isinstance(inner, CoupledDecaySGD) and inner.use_ema and inner.coupled_weight_decay == 1e-3
    assert (loaded.optimizer.clip_factor, loaded.optimizer.exclude) == (0.05, r"classifier/kernel$")
    assert_same_state(model.optimizer, loaded.optimizer)
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 2
    # Training on from both gives the same weights: the restored state is the state that is used.
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weights_file_round_trip(tmp_path):
    model, _, _ = trained()
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    fresh, _, _ = model_and_data()
    compile_(fresh, make_optimizer())
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(path)
    assert_same_state(model.optimizer, fresh.optimizer)
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 2
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
