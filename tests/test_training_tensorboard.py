"""TensorBoard: a pretraining run's event files hold every scalar the trainer promises (read back with
TensorBoard's own event reader) with values checked against independent formulas, the hparams plugin record is
there, and a real `tensorboard --logdir` on 127.0.0.1 serves the loss curve over HTTP."""
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from tensorboard.backend.event_processing import event_accumulator

from keras_nfnet.flops import count_macs
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs.pretrain import pretrain

TAGS = ["train/loss", "train/learning_rate", "agc/clipped_fraction", "agc/grad_norm", "perf/images_per_second",
        "perf/images_per_second_per_device", "perf/mfu", "compute/flops", "compute/device_hours", "heldout/loss",
        "heldout/loss_vs_mflops", "heldout/loss_vs_device_seconds"]
BATCH, STEPS, PEAK = 8, 8, 1e11


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from keras_nfnet.data.synthetic import make_synthetic_corpus

    corpus = str(tmp_path_factory.mktemp("corpus"))
    make_synthetic_corpus(corpus, num_images=64, num_classes=10, image_size=32, num_holdout=12, seed=4,
                          multi_label=True, examples_per_shard=64)
    workdir = str(tmp_path_factory.mktemp("run"))
    config = config_lib.load("cpu_tiny", corpus=corpus, global_batch_size=BATCH, epochs=1.0, warmup_epochs=0.25,
                             log_every_steps=1, eval_every_steps=4, checkpoint_every_steps=4,
                             peak_flops_per_device=PEAK, verbose=0)
    result = pretrain(config, workdir)
    acc = event_accumulator.EventAccumulator(result["tensorboard_dir"], size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return config, result, acc


def _series(acc, tag):
    # TF2 summaries are stored as tensors; the scalars plugin reads them the same way.
    return [(e.step, float(e.tensor_proto.float_val[0]) if e.tensor_proto.float_val else
             float(__import__("tensorflow").make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def test_every_scalar_is_logged(run):
    _, result, acc = run
    tags = acc.Tags()["tensors"]
    missing = [t for t in TAGS if t not in tags]
    assert not missing, f"missing {missing}; logged {tags}"
    assert [s for s, _ in _series(acc, "train/loss")] == list(range(1, STEPS + 1))
    assert [s for s, _ in _series(acc, "heldout/loss")] == [4, 8]
    assert _series(acc, "heldout/loss")[-1][1] == pytest.approx(result["metrics"]["heldout_loss"], rel=1e-6)


def test_values_follow_independent_formulas(run):
    config, result, acc = run
    # Learning rate: linear warmup over 2 steps to base * batch / 256, then cosine to 0 at step 8 (the
    # optimizer has applied `step` updates when the scalar is written; the logged value is the next rate).
    peak = config.base_learning_rate * BATCH / 256
    warmup = 2
    for step, lr in _series(acc, "train/learning_rate"):
        want = peak * step / warmup if step < warmup else \
            peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (STEPS - warmup)))
        assert lr == pytest.approx(want, rel=1e-5, abs=1e-9), step
    # FLOPs: 6 x forward MACs per image (NFNET_SPEC.md section 5), accumulated per image trained.
    per_image = 6 * count_macs("tiny", 32, num_classes=10)
    for step, flops in _series(acc, "compute/flops"):
        assert flops == pytest.approx(per_image * BATCH * step, rel=1e-6)
    # MFU = achieved FLOP/s / (peak x devices), achieved = images/s x FLOPs per image.
    ips = dict(_series(acc, "perf/images_per_second"))
    for step, mfu in _series(acc, "perf/mfu")[1:]:
        assert mfu == pytest.approx(ips[step] * per_image / PEAK, rel=1e-4)
    assert all(0 <= v <= 1 for _, v in _series(acc, "agc/clipped_fraction"))
    assert all(v > 0 for _, v in _series(acc, "agc/grad_norm"))
    hours = [v for _, v in _series(acc, "compute/device_hours")]
    assert hours == sorted(hours) and hours[-1] > 0
    # Held-out loss against compute: x is accumulated MFLOPs.
    xs = [s for s, _ in _series(acc, "heldout/loss_vs_mflops")]
    assert xs == [int(per_image * BATCH * 4 / 1e6), int(per_image * BATCH * 8 / 1e6)]
    assert result["metrics"]["flops"] == pytest.approx(per_image * BATCH * STEPS)


def test_hparams_are_logged(run):
    config, _, acc = run
    plugins = acc.PluginTagToContent("hparams")
    assert plugins, "no hparams plugin data"
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = {}
    for content in plugins.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            found = dict(data.session_start_info.hparams)
    assert found["variant"].string_value == "tiny"
    assert found["global_batch_size"].number_value == BATCH
    assert found["base_learning_rate"].number_value == pytest.approx(config.base_learning_rate)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_server_serves_the_loss_curve(run):
    _, result, acc = run
    port = _free_port()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir",
                               result["tensorboard_dir"], "--host", "127.0.0.1", "--port", str(port),
                               "--load_fast", "false"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=.&tag=train%2Floss"
        deadline, body, last_error = time.time() + 120, None, None
        while time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = json.loads(response.read())
                if body:
                    break
            except OSError as error:  # not up yet, or not loaded the run yet
                last_error = error
            time.sleep(0.5)
        assert body, f"tensorboard did not serve the loss curve: {last_error}"
        served = [(int(step), value) for _, step, value in body]
        want = _series(acc, "train/loss")
        assert [s for s, _ in served] == [s for s, _ in want]
        assert [v for _, v in served] == pytest.approx([v for _, v in want], rel=1e-6)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
