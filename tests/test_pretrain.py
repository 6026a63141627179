"""The pretraining job in-process: MirroredStrategy over two logical CPU devices equals one device, bad configs
fail before any work, a NaN/inf loss stops the run leaving the last good checkpoint, SIGTERM checkpoints and
exits, the result and the work directory layout."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs.pretrain import pretrain
from keras_nfnet.training import callbacks as cb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from keras_nfnet.data.synthetic import make_synthetic_corpus

    path = str(tmp_path_factory.mktemp("corpus"))
    make_synthetic_corpus(path, num_images=64, num_classes=10, image_size=32, num_holdout=12, seed=3,
                          multi_label=False, examples_per_shard=32)
    return path


def _config(corpus_dir, **overrides):
    fields = dict(corpus=corpus_dir, global_batch_size=8, epochs=1.0, checkpoint_every_steps=2, eval_every_steps=4,
                  log_every_steps=2, peak_flops_per_device=1e11, verbose=0)
    fields.update(overrides)
    return config_lib.load("cpu_tiny", **fields)


def _weights(workdir, step):
    out = {}
    path = os.path.join(workdir, "checkpoints", f"ckpt-{step:09d}", "model.weights.h5")
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) and "layers" in n
                     else None)
    return out


def test_mirrored_two_cpu_devices_match_one_device(corpus, tmp_path):
    one = pretrain(_config(corpus, max_steps=4), str(tmp_path / "one"))
    two = pretrain(_config(corpus, max_steps=4, strategy="mirrored", num_cpu_devices=2, steps_per_execution=2),
                   str(tmp_path / "two"))
    assert one["status"] == two["status"] == "stopped" and one["step"] == two["step"] == 4
    a, b = _weights(str(tmp_path / "one"), 4), _weights(str(tmp_path / "two"), 4)
    assert sorted(a) == sorted(b) and len(a) > 10
    a2, b2 = _weights(str(tmp_path / "one"), 2), _weights(str(tmp_path / "two"), 2)
    moved = 0.0
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)
        # The updates of steps 3-4 agree too (weights that barely moved would make the check above empty).
        delta_a, delta_b = a[name] - a2[name], b[name] - b2[name]
        assert np.abs(delta_b - delta_a).max() <= 1e-2 * np.abs(delta_a).max() + 1e-7, name
        moved = max(moved, float(np.abs(delta_a).max()))
    assert moved > 1e-4
    assert abs(one["metrics"]["heldout_loss"] - two["metrics"]["heldout_loss"]) < 1e-4
    # Two replicas did the same work: equal FLOPs; devices counted in device-hours.
    assert one["metrics"]["flops"] == pytest.approx(two["metrics"]["flops"])


def test_fractional_budget_sets_schedule_length_and_result(corpus, tmp_path):
    result = pretrain(_config(corpus, epochs=0.75, eval_every_steps=2), str(tmp_path / "run"))
    assert result["status"] == "done" and result["total_steps"] == result["step"] == 6  # ceil(0.75 * 64 / 8)
    assert np.isfinite(result["metrics"]["heldout_loss"])
    # The one result schema of every job (keras_nfnet.jobs.context), written when the budget is done.
    import json

    saved = json.load(open(tmp_path / "run" / "result.json"))
    assert saved == result and saved["job"] == "pretrain" and saved["config"]["epochs"] == 0.75
    assert sorted(saved) == ["bad_records", "config", "job", "metrics", "seconds", "status", "step", "tensorboard_dir",
                             "total_steps", "workdir"]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == [f"ckpt-{s:09d}" for s in (2, 4, 6)][-3:]
    # Resuming a finished run does no more steps and reports the same held-out loss.
    again = pretrain(_config(corpus, epochs=0.75, eval_every_steps=2), str(tmp_path / "run"))
    assert again["step"] == 6
    assert again["metrics"]["heldout_loss"] == pytest.approx(result["metrics"]["heldout_loss"], abs=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (dict(variant="F99"), "unknown variant 'F99'"),
    (dict(global_batch_size=9, strategy="mirrored", num_cpu_devices=2), "not divisible by the 2 replicas"),
    (dict(corpus="/nonexistent/corpus"), "corpus /nonexistent/corpus is missing"),
    (dict(epochs=0.0), "epoch budget"),
    (dict(epochs=-1.0), "epoch budget"),
])
def test_bad_config_fails_before_any_work(corpus, tmp_path, overrides, message):
    workdir = tmp_path / "run"
    start = time.time()
    with pytest.raises(ValueError, match=message):
        pretrain(_config(corpus, **overrides), str(workdir))
    assert not workdir.exists() or not any(workdir.iterdir())
    assert time.time() - start < 20


def test_resume_with_incompatible_config_is_refused(corpus, tmp_path):
    pretrain(_config(corpus, max_steps=2), str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"base_learning_rate: 0\.4 -> 0\.8"):
        pretrain(_config(corpus, max_steps=4, base_learning_rate=0.8), str(tmp_path / "run"))
    # So is pointing it at a different corpus.
    from keras_nfnet.data.synthetic import make_synthetic_corpus

    other = str(tmp_path / "other-corpus")
    make_synthetic_corpus(other, num_images=64, num_classes=10, image_size=32, num_holdout=12, seed=99,
                          multi_label=False, examples_per_shard=32)
    with pytest.raises(ValueError, match="corpus_sha256"):
        pretrain(_config(other, max_steps=4), str(tmp_path / "run"))
    # (Fields that only change how the run executes may change: tests/test_training_config.py; resuming itself:
    # tests/test_pretrain_kill.py.)


def test_an_image_the_decoder_rejects_is_named_by_shard_and_record(tmp_path):
    import tensorflow as tf

    from keras_nfnet.data.corpus import CorpusWriter

    rng = np.random.default_rng(0)
    d = str(tmp_path / "corpus")
    with CorpusWriter(d, num_classes=10, multi_label=False, image_format="png") as w:
        for i in range(24):
            png = bytearray(tf.io.encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).numpy())
            if i == 11:  # magic number and IEND intact, image data damaged: only the decoder can tell
                start = png.index(b"IDAT") + 4
                png[start:start + 12] = b"\xff" * 12
            w.add("train" if i < 16 else "holdout", bytes(png), [i % 10], i)
    with pytest.raises(ValueError, match=r"^bad record: split train shard train-00000.tfrecord record 11: "
                                         r"TensorFlow's decoder rejects the image \(Invalid PNG data, size \d+\)$"):
        pretrain(_config(d, epochs=1.0), str(tmp_path / "run"))


def test_divergence_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
    config = _config(corpus, base_learning_rate=1e9, agc_clip=0.0, checkpoint_every_steps=1, epochs=2.0)
    with pytest.raises(cb.TrainingDiverged, match="diverged.*last good checkpoint"):
        pretrain(config, str(tmp_path / "run"))
    steps = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert steps, "no checkpoint survived"
    last = int(steps[-1].split("-")[1])
    assert last < 16
    for name, value in _weights(str(tmp_path / "run"), last).items():
        assert np.all(np.isfinite(value)), name


def test_sigterm_saves_a_checkpoint_and_exits_143(corpus, tmp_path):
    workdir = str(tmp_path / "run")
    overrides = [f"--config.{k}={v}" for k, v in dict(
        corpus=corpus, global_batch_size=8, epochs=6, checkpoint_every_steps=4, eval_every_steps=1000,
        peak_flops_per_device=1e11, verbose=0).items()]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.Popen([sys.executable, "trainers/pretrain.py", "--config=cpu_tiny", *overrides,
                             "--workdir", workdir],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = os.path.join(workdir, "checkpoints")
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and not (
                os.path.isdir(checkpoints) and any(n.startswith("ckpt-") for n in os.listdir(checkpoints))):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, output[-3000:]
    import re

    step = int(re.search(r"preempted at step (\d+)/48", output).group(1))
    assert 4 <= step < 48
    assert f"ckpt-{step:09d}" in os.listdir(checkpoints)


def test_command_reports_a_bad_config_without_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.run([sys.executable, "trainers/pretrain.py", "--config=cpu_tiny", "--config.corpus=/nonexistent",
                           "--config.variant=F99", "--config.epochs=0", "--workdir", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for needle in ("unknown variant 'F99'", "epoch budget", "corpus /nonexistent is missing"):
        assert needle in proc.stderr
    assert not (tmp_path / "run").exists()
