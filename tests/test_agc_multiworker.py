"""AGC under MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 equal one device.

The workers run a hand-written step (`strategy.run` inside a tf.function): model.fit under
MultiWorkerMirroredStrategy needs Keras workarounds that live with the trainer (keras_nfnet/training/), while the
part that is AGC's job, summing over all replicas before clipping, is the same in both. Each worker reads its half
of every global batch, so the global batch is the one the single-device run sees.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.distribute tests need the TensorFlow backend", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, GLOBAL_BATCH = 3, 16

# Shared by the workers and the single-device reference (run in a fresh process too, with one CPU device).
PROGRAM = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    import keras
    from keras_nfnet.agc import AGC
    from keras_nfnet.optimizers import CoupledDecaySGD

    STEPS, GLOBAL_BATCH = {steps}, {batch}
    out_path = sys.argv[1]
    multi = "TF_CONFIG" in os.environ
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if multi else tf.distribute.get_strategy()
    workers = len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]) if multi else 1
    worker = json.loads(os.environ["TF_CONFIG"])["task"]["index"] if multi else 0

    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * GLOBAL_BATCH, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=STEPS * GLOBAL_BATCH)

    def convnet():
        inp = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inp, keras.layers.Dense(4, name="classifier")(h))

    keras.utils.set_random_seed(0)
    initial = convnet().get_weights()
    with strategy.scope():
        model = convnet()
        model.set_weights(initial)
        opt = AGC(CoupledDecaySGD(0.5, weight_decay=1e-3), clip_factor=0.1)
        opt.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    per_worker = GLOBAL_BATCH // workers

    def dataset_fn(context):
        # Worker w reads rows [w * per_worker, (w + 1) * per_worker) of every global batch.
        xs = x.reshape(STEPS, GLOBAL_BATCH, 8, 8, 3)[:, worker * per_worker:(worker + 1) * per_worker]
        ys = y.reshape(STEPS, GLOBAL_BATCH)[:, worker * per_worker:(worker + 1) * per_worker]
        return tf.data.Dataset.from_tensor_slices((xs, ys))

    @tf.function
    def step(xb, yb):
        def replica_step(xr, yr):
            with tf.GradientTape() as tape:
                loss = loss_fn(yr, model(xr, training=True)) / GLOBAL_BATCH
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        strategy.run(replica_step, args=(xb, yb))

    if multi:
        batches = strategy.distribute_datasets_from_function(dataset_fn)
    else:
        batches = dataset_fn(None)
    for xb, yb in batches:
        step(xb, yb)
    np.savez(out_path, *[w.numpy() for w in model.trainable_weights],
             clipped_fraction=opt.clipped_fraction.numpy(), replicas=strategy.num_replicas_in_sync)
''').format(steps=STEPS, batch=GLOBAL_BATCH)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def environment(tf_config=None):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def load(path):
    with np.load(path) as data:
        weights = [data[f"arr_{i}"] for i in range(4)]
        return weights, float(data["clipped_fraction"]), int(data["replicas"])


def test_two_workers_equal_one_device(tmp_path):
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, str(program), str(tmp_path / f"worker{index}.npz")], cwd=ROOT,
            env=environment(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    single = subprocess.run([sys.executable, str(program), str(tmp_path / "single.npz")], cwd=ROOT,
                            env=environment(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    for process in processes:
        try:
            output, _ = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
        assert process.returncode == 0, output[-4000:]

    reference, reference_fraction, one = load(tmp_path / "single.npz")
    assert one == 1 and 0 < reference_fraction < 1
    for index in range(2):
        weights, fraction, replicas = load(tmp_path / f"worker{index}.npz")
        assert replicas == 2
        assert fraction == pytest.approx(reference_fraction, rel=1e-6)
        difference = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, reference))
        assert difference < 1e-5, f"worker {index} differs from one device by {difference}"
