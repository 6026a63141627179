"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 run the pretrain command with model.fit
(through the workarounds of keras_nfnet.training.keras_workarounds) and end with identical weights, equal to a
single-process run of the same global batch; a SIGTERM to one worker stops both at the same step, and the restart
is exact."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from keras_nfnet.data.synthetic import make_synthetic_corpus

    path = str(tmp_path_factory.mktemp("corpus"))
    make_synthetic_corpus(path, num_images=64, num_classes=10, image_size=32, num_holdout=16, seed=2,
                          multi_label=True, examples_per_shard=32)
    return path


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(corpus, workdir, strategy, tf_config=None, steps_per_execution=1):
    overrides = (f"corpus={corpus},strategy={strategy},global_batch_size=8,epochs={STEPS * 8 / 64},"
                 f"steps_per_execution={steps_per_execution},checkpoint_every_steps={STEPS // 2},"
                 f"eval_every_steps={STEPS},log_every_steps={steps_per_execution},peak_flops_per_device=1e11,"
                 "verbose=0")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    cmd = [sys.executable, os.path.join(ROOT, "trainers", "pretrain.py"),
           "--config=cpu_tiny", *[f"--config.{kv}" for kv in overrides.split(",")], "--workdir", workdir]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) and "layers" in n
                     else None)
    return out


@pytest.mark.parametrize("steps_per_execution", [2])
def test_two_workers_match_one_process(corpus, tmp_path, steps_per_execution):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workdir = str(tmp_path / "multi")
    workers = [_launch(corpus, workdir, "multiworker", {"cluster": cluster, "task": {"type": "worker", "index": i}},
                       steps_per_execution) for i in range(2)]
    single = _launch(corpus, str(tmp_path / "single"), "default", None, steps_per_execution)
    outputs = []
    try:
        for proc in workers + [single]:
            outputs.append(proc.communicate(timeout=400)[0])
            assert proc.returncode == 0, outputs[-1][-4000:]
    finally:  # a failing worker leaves no process behind (its peer would wait for it forever)
        for proc in workers + [single]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    shas = [re.search(r"final weights sha256: (\w+)", out).group(1) for out in outputs]
    assert shas[0] == shas[1], "the two workers ended with different weights"
    assert f"at step {STEPS}/{STEPS}" in outputs[0] and f"at step {STEPS}/{STEPS}" in outputs[1]

    def ckpt(step):
        return f"checkpoints/ckpt-{step:09d}/model.weights.h5"

    multi, one = _weights(os.path.join(workdir, ckpt(STEPS))), _weights(str(tmp_path / "single" / ckpt(STEPS)))
    multi_half = _weights(os.path.join(workdir, ckpt(STEPS // 2)))
    one_half = _weights(str(tmp_path / "single" / ckpt(STEPS // 2)))
    assert sorted(multi) == sorted(one) and len(one) > 10
    moved = 0.0
    for name in one:
        np.testing.assert_allclose(multi[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
        # The updates of the second half agree too (weights that barely moved would make the check empty).
        d_one, d_multi = one[name] - one_half[name], multi[name] - multi_half[name]
        assert np.abs(d_multi - d_one).max() <= 1e-2 * np.abs(d_one).max() + 1e-7, name
        moved = max(moved, float(np.abs(d_one).max()))
    assert moved > 1e-4
    losses = [float(re.search(r"held-out loss ([\d.]+)", out).group(1)) for out in outputs]
    assert losses[0] == losses[1]
    assert abs(losses[0] - losses[2]) < 1e-4


def _launch_pair(corpus, workdir, overrides):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    cmd = [sys.executable, os.path.join(ROOT, "trainers", "pretrain.py"), "--config=cpu_tiny",
           *[f"--config.{kv}" for kv in f"corpus={corpus},{overrides}".split(",")], "--workdir", workdir]
    return [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(env, TF_CONFIG=json.dumps({"cluster": cluster,
                                                                 "task": {"type": "worker", "index": i}})))
            for i in range(2)]


def test_sigterm_on_one_worker_stops_every_worker_at_the_same_step_and_the_restart_is_exact(corpus, tmp_path):
    """SIGTERM reaches only worker 1 (not the chief): both workers save the same step and exit with 143; the
    restarted pair ends bitwise equal to an uninterrupted two-worker run."""
    total = 64
    overrides = (f"strategy=multiworker,global_batch_size=8,epochs={total * 8 / 64},checkpoint_every_steps=4,"
                 f"eval_every_steps={total},log_every_steps=4,peak_flops_per_device=1e11,verbose=0")
    reference = _launch_pair(corpus, str(tmp_path / "reference"), overrides)
    workdir = str(tmp_path / "preempted")
    pair = _launch_pair(corpus, workdir, overrides)
    everyone = reference + pair
    try:
        checkpoints = os.path.join(workdir, "checkpoints")
        deadline = time.time() + 400
        while time.time() < deadline and all(p.poll() is None for p in pair) and not (
                os.path.isdir(checkpoints) and any(n.startswith("ckpt-") for n in os.listdir(checkpoints))):
            time.sleep(0.02)
        pair[1].send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=300)[0] for p in pair]
        assert [p.returncode for p in pair] == [143, 143], "\n----\n".join(o[-3000:] for o in outputs)
        stopped = [int(re.search(rf"preempted at step (\d+)/{total}", o).group(1)) for o in outputs]
        assert stopped[0] == stopped[1] and 4 <= stopped[0] < total, stopped
        assert f"ckpt-{stopped[0]:09d}" in os.listdir(checkpoints)

        restarted = _launch_pair(corpus, workdir, overrides)
        everyone += restarted
        outputs = [p.communicate(timeout=400)[0] for p in restarted]
        assert [p.returncode for p in restarted] == [0, 0], "\n----\n".join(o[-3000:] for o in outputs)
        assert all(f"Resuming from step {stopped[0]} " in o for o in outputs)
        ref_outputs = [p.communicate(timeout=400)[0] for p in reference]
        assert [p.returncode for p in reference] == [0, 0], "\n----\n".join(o[-3000:] for o in ref_outputs)
    finally:
        for proc in everyone:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    shas = [re.search(r"final weights sha256: (\w+)", o).group(1) for o in outputs + ref_outputs]
    assert len(set(shas)) == 1, shas
    final = f"checkpoints/ckpt-{total:09d}/model.weights.h5"
    want, got = _weights(str(tmp_path / "reference" / final)), _weights(os.path.join(workdir, final))
    assert sorted(want) == sorted(got) and len(want) > 10
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
