"""Checkpoints in a bucket (GCS emulator over HTTP; also TensorFlow's ram:// through tf.io.gfile): no rename there, so a checkpoint is complete once its COMMITTED
marker, written last, exists. An uncommitted one (a write cut short) is ignored and cleaned up, pruning never
leaves a half-deleted checkpoint that looks complete, and the damaged-checkpoint fallback works as locally. The
reference for restored values is the in-memory model that was saved."""
import keras
import numpy as np
import pytest

from keras_nfnet import storage
from keras_nfnet.training.checkpoint import (COMMIT_FILE, STATE_FILE, WEIGHTS_FILE, CheckpointManager,
                                             DamagedCheckpointsError)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _train(model, steps):
    x = np.arange(32, dtype="float32").reshape(8, 4) / 32
    model.fit(x, np.ones((8, 3), "float32"), batch_size=8, epochs=steps, verbose=0)


def _assert_same_weights(a, b):
    for x, y in zip(a.weights + a.optimizer.variables, b.weights + b.optimizer.variables):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize("where", ["gcs_dir", "ram_dir"])
def test_remote_checkpoints_commit_prune_and_restore(where, request):
    directory = storage.join(request.getfixturevalue(where), "checkpoints")
    manager = CheckpointManager(directory, keep=2)
    model = _model()
    saved = {}
    for step in (1, 2, 3):
        _train(model, 1)
        manager.save(model, step, {"compute": {"flops": float(step)}})
        saved[step] = [v.numpy().copy() for v in model.weights]
    assert manager.steps() == [2, 3]
    assert storage.listdir(directory) == ["ckpt-000000002", "ckpt-000000003"]
    assert storage.listdir(manager.path(3)) == [COMMIT_FILE, WEIGHTS_FILE, STATE_FILE]

    # A write cut short before its marker: files there, no COMMITTED. Invisible, then removed by the next writer.
    partial = manager.path(4)
    storage.write_bytes(storage.join(partial, WEIGHTS_FILE), b"half an h5 file")
    storage.write_text(storage.join(partial, STATE_FILE), '{"step": 4}')
    assert manager.steps() == [2, 3] and manager.all_steps() == [3, 2] and manager.latest_step() == 3
    reader = CheckpointManager(directory, write=False)
    assert storage.exists(storage.join(partial, STATE_FILE))  # a reader deletes nothing
    other = _model(seed=1)
    step, state = reader.restore(other)
    assert step == 3 and state["compute"]["flops"] == 3.0
    _assert_same_weights(model, other)
    CheckpointManager(directory)
    assert not storage.exists(partial)

    # A checkpoint whose marker was deleted first (pruning cut short) is no longer complete.
    storage.remove(storage.join(manager.path(2), COMMIT_FILE))
    assert manager.steps() == [3]


def test_remote_damaged_checkpoint_is_set_aside(gcs_dir):
    directory = storage.join(gcs_dir, "checkpoints")
    manager = CheckpointManager(directory, keep=3)
    model = _model()
    for step in (1, 2):
        _train(model, 1)
        manager.save(model, step, {})
        if step == 1:
            reference = _model(seed=1)
            reference.set_weights(model.get_weights())
    weights = storage.join(manager.path(2), WEIGHTS_FILE)
    storage.write_bytes(weights, storage.read_bytes(weights)[:200])  # truncated upload of the newest
    lines = []
    other = _model(seed=2)
    step, _ = manager.restore(other, report=lines.append)
    assert step == 1
    for a, b in zip(reference.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(lines) == 1 and "ckpt-000000002 is damaged" in lines[0] and "damaged-ckpt-000000002" in lines[0]
    assert storage.listdir(directory) == ["ckpt-000000001", "damaged-ckpt-000000002"]
    assert manager.steps() == [1]

    storage.write_bytes(storage.join(manager.path(1), WEIGHTS_FILE), b"not h5")
    with pytest.raises(DamagedCheckpointsError, match="ckpt-000000001: model.weights.h5 does not load"):
        manager.restore(_model(seed=3))
    assert storage.exists(storage.join(manager.path(1), COMMIT_FILE))  # none intact: nothing moved


@pytest.mark.parametrize("where", ["gcs_dir", "ram_dir"])
def test_tensorboard_events_reach_the_store_on_each_flush(where, request):
    """SummaryWriter: events written locally, uploaded on flush and close; read back with TensorFlow's own event
    reader from a downloaded copy."""
    import tensorflow as tf

    from keras_nfnet.training.callbacks import SummaryWriter

    logdir = storage.join(request.getfixturevalue(where), "tensorboard")
    writer = SummaryWriter(logdir)

    def scalars():
        values = {}
        for name in storage.listdir(logdir):
            for event in tf.compat.v1.train.summary_iterator(storage.fetch_file(storage.join(logdir, name))):
                for value in event.summary.value:
                    values[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
        return values

    with writer.as_default(step=1):
        tf.summary.scalar("train/loss", 2.5)
    writer.flush()
    assert scalars() == {("train/loss", 1): 2.5}
    with writer.as_default(step=2):
        tf.summary.scalar("train/loss", 1.5)
    writer.close()
    assert scalars() == {("train/loss", 1): 2.5, ("train/loss", 2): 1.5}
