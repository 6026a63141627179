"""Checkpoints: atomic (a write killed before its rename leaves no checkpoint and is cleaned up), keep the last N,
restore model + optimizer state + step, refuse an inconsistent checkpoint."""
import json
import os

import keras
import numpy as np
import pytest

from keras_nfnet.training.checkpoint import STATE_FILE, WEIGHTS_FILE, CheckpointManager, DamagedCheckpointsError


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _train(model, steps):
    x = np.arange(32, dtype="float32").reshape(8, 4) / 32
    model.fit(x, np.ones((8, 3), "float32"), batch_size=8, epochs=steps, verbose=0)


def test_save_restore_roundtrip_with_optimizer_state(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=2)
    model = _model()
    _train(model, 3)
    manager.save(model, 3, {"compute": {"flops": 12.0}})
    other = _model(seed=1)
    step, state = manager.restore(other)
    assert step == 3 and state["compute"]["flops"] == 12.0 and state["step"] == 3
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    momentum = [v for v in model.optimizer.variables if "momentum" in v.path]
    restored = [v for v in other.optimizer.variables if "momentum" in v.path]
    assert momentum and np.abs(momentum[0].numpy()).max() > 0
    for a, b in zip(momentum, restored):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_keeps_last_n(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=2)
    model = _model()
    for step in (1, 2, 3, 4):
        _train(model, 1)
        manager.save(model, step, {})
    assert manager.steps() == [3, 4]
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000003", "ckpt-000000004"]


def test_partial_write_is_invisible_and_cleaned(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=3)
    model = _model()
    _train(model, 1)
    manager.save(model, 1, {})
    # What a process killed mid-write leaves: a temporary directory with half the files.
    partial = tmp_path / ".tmp-999-ckpt-000000002"
    partial.mkdir()
    (partial / WEIGHTS_FILE).write_bytes(b"\x89HDF\r\n")
    # and a final-named directory without its state file cannot exist (rename is the last step), but a
    # stray one is still not taken for a checkpoint:
    (tmp_path / "ckpt-000000005").mkdir()
    assert manager.steps() == [1]
    CheckpointManager(str(tmp_path), keep=3)  # a restart cleans the partial write
    assert not partial.exists()
    assert manager.latest_step() == 1


def test_inconsistent_step_is_refused(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=3)
    model = _model()
    _train(model, 2)
    manager.save(model, 2, {})
    path = os.path.join(manager.path(2), STATE_FILE)
    with open(path) as f:
        state = json.load(f)
    with open(path, "w") as f:
        json.dump(dict(state, step=7), f)
    with pytest.raises(ValueError, match="inconsistent"):
        manager.restore(_model())


def test_reader_only_manager_writes_nothing(tmp_path):
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep=1, write=False)
    assert manager.save(_model(), 1, {}) is None
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(str(tmp_path), keep=0)
    with pytest.raises(FileNotFoundError):
        manager.restore(_model())


def test_resume_continues_the_random_stream(tmp_path):
    """Dropout masks after a resume are the ones an uninterrupted run draws (Keras' weights file alone would
    restart the generator)."""
    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16), keras.layers.Dropout(0.5),
                              keras.layers.Dense(3)])
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        m.optimizer.build(m.trainable_variables)
        return m

    uninterrupted = model()
    _train(uninterrupted, 2)
    manager = CheckpointManager(str(tmp_path), keep=1)
    manager.save(uninterrupted, 2, {})
    _train(uninterrupted, 2)

    resumed = model()
    _train(resumed, 1)  # advance its generator: the restore must set it, not leave it
    manager.restore(resumed)
    _train(resumed, 2)
    for a, b in zip(uninterrupted.weights, resumed.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _checkpoints(manager, steps):
    model = _model()
    saved = {}
    for step in steps:
        _train(model, 1)
        manager.save(model, step, {})
        saved[step] = [v.numpy() for v in model.weights]
    return saved


def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=3)
    saved = _checkpoints(manager, (1, 2, 3))
    weights = os.path.join(manager.path(3), WEIGHTS_FILE)
    with open(weights, "r+b") as f:  # truncated, as a full disk or a killed copy leaves it
        f.truncate(os.path.getsize(weights) // 2)
    os.remove(os.path.join(manager.path(2), STATE_FILE))  # and the next one lost its state
    lines = []
    model = _model(seed=5)
    step, _ = manager.restore(model, report=lines.append)
    assert step == 1
    for value, variable in zip(saved[1], model.weights):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert len(lines) == 2 and "ckpt-000000003 is damaged (model.weights.h5 does not load" in lines[0]
    assert "ckpt-000000002 is damaged (state.json is missing)" in lines[1]
    # kept aside, not deleted, and no longer seen as checkpoints
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000001", "damaged-ckpt-000000002", "damaged-ckpt-000000003"]
    assert manager.all_steps() == [1]
    assert os.path.getsize(os.path.join(tmp_path, "damaged-ckpt-000000003", WEIGHTS_FILE)) > 0


def test_no_intact_checkpoint_is_an_error_that_moves_nothing(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=2)
    _checkpoints(manager, (1, 2))
    for step in (1, 2):
        with open(os.path.join(manager.path(step), STATE_FILE), "w") as f:
            f.write("{not json")
    with pytest.raises(DamagedCheckpointsError, match=r"no intact checkpoint in .*ckpt-000000002: state.json is "
                                                      r"unreadable .*ckpt-000000001: state.json is unreadable"):
        manager.restore(_model())
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000001", "ckpt-000000002"]
    # a reader (a non-chief worker) falls back the same way but renames nothing
    reader = CheckpointManager(str(tmp_path), keep=2, write=False)
    with pytest.raises(DamagedCheckpointsError):
        reader.restore(_model())
