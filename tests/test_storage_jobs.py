"""The jobs on a bucket end to end (GCS emulator over HTTP on 127.0.0.1, reached by gcsfs in the job processes
too): a corpus written to gs://, pretraining there killed with SIGKILL after a few checkpoints and re-run, whose
final weights must be bitwise equal to an uninterrupted run of the same config on a LOCAL corpus and work
directory (the independent reference); TensorBoard events in the bucket, read back with TensorBoard's own loader;
fine-tuning from the remote work directory into the bucket; an export written there that loads and predicts as
the fine-tuned model does."""
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from keras_nfnet import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, HOLDOUT, BATCH, EPOCHS = 32, 8, 8, 2
TOTAL = TRAIN * EPOCHS // BATCH  # 8 steps
CORPUS = dict(num_images=TRAIN, num_classes=5, image_size=32, num_holdout=HOLDOUT, seed=4, multi_label=False,
              examples_per_shard=16, progress_every=0)


def _launch(corpus, workdir):
    overrides = (f"corpus={corpus},epochs={EPOCHS},global_batch_size={BATCH},image_size=32,eval_image_size=32,"
                 "checkpoint_every_steps=1,keep_checkpoints=2,eval_every_steps=4,log_every_steps=2,"
                 "peak_flops_per_device=1e11,verbose=0")
    cmd = [sys.executable, "-m", "keras_nfnet.jobs.pretrain", "--config=cpu_tiny",
           *[f"--config.{kv}" for kv in overrides.split(",")], "--workdir", workdir]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(path):
    out = {}
    with h5py.File(storage.fetch_file(path), "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _committed_steps(workdir):
    directory = storage.join(workdir, "checkpoints")
    names = storage.listdir(directory) if storage.isdir(directory) else []
    return sorted(int(m.group(1)) for m in map(re.compile(r"ckpt-(\d+)$").match, names)
                  if m and storage.exists(storage.join(directory, m.group(0), "COMMITTED")))


def test_pretrain_kill_resume_finetune_export_on_a_bucket(gcs_dir, tmp_path, processes):
    from keras_nfnet.data.synthetic import make_synthetic_corpus

    local_corpus, local_workdir = str(tmp_path / "corpus"), str(tmp_path / "reference")
    remote_corpus, remote_workdir = storage.join(gcs_dir, "corpus"), storage.join(gcs_dir, "pretrain")
    make_synthetic_corpus(local_corpus, **CORPUS)
    make_synthetic_corpus(remote_corpus, **CORPUS)
    reference = _launch(local_corpus, local_workdir)
    processes.append(reference)

    killed = _launch(remote_corpus, remote_workdir)
    processes.append(killed)
    deadline = time.time() + 240
    while killed.poll() is None and time.time() < deadline and len(_committed_steps(remote_workdir)) < 2:
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    output = killed.communicate()[0]
    assert killed.returncode == -9, f"run was not killed (rc {killed.returncode}):\n{output[-3000:]}"
    on_bucket = _committed_steps(remote_workdir)
    assert on_bucket and on_bucket[-1] < TOTAL, on_bucket

    resumed = _launch(remote_corpus, remote_workdir)
    processes.append(resumed)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    match = re.search(r"Resuming from step (\d+)", output)
    assert match and int(match.group(1)) >= on_bucket[-1], output[-3000:]  # a later one may have been committed
    ref_output = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, ref_output[-3000:]

    assert _committed_steps(remote_workdir) == [TOTAL - 1, TOTAL]
    assert storage.exists(storage.join(remote_workdir, "result.json"))
    want = _weights(os.path.join(local_workdir, "checkpoints", f"ckpt-{TOTAL:09d}", "model.weights.h5"))
    got = _weights(storage.join(remote_workdir, "checkpoints", f"ckpt-{TOTAL:09d}", "model.weights.h5"))
    assert sorted(want) == sorted(got) and len(want) > 10
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert int(got["optimizer/inner_optimizer/vars/0"]) == TOTAL

    # TensorBoard: both runs' event files are in the bucket; TensorBoard's loader reads the training scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [n for n in storage.listdir(storage.join(remote_workdir, "tensorboard")) if "tfevents" in n]
    assert len(events) == 2, events
    accumulator = EventAccumulator(storage.fetch_dir(storage.join(remote_workdir, "tensorboard")),
                                   size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"]
    loss_tag = next(t for t in tags if "loss" in t and "train" in t)
    assert sorted({e.step for e in accumulator.Tensors(loss_tag)}) == list(range(2, TOTAL + 1, 2))

    # Fine-tune from the remote pretraining work directory into the bucket, then export into the bucket.
    import keras
    import tensorflow as tf

    from keras_nfnet.data import preprocess
    from keras_nfnet.export import export_for_serving, read_class_names

    from keras_nfnet.jobs import config as config_lib
    from keras_nfnet.jobs.finetune import finetune
    from keras_nfnet.jobs.sources import load_model

    from_bucket, from_disk = load_model(remote_workdir), load_model(local_workdir)
    for a, b in zip(from_bucket.weights, from_disk.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    config = config_lib.load("finetune", source=remote_workdir, corpus=remote_corpus, train_split="train",
                             eval_split="holdout", image_size=32, eval_image_size=32, epochs=0.5, global_batch_size=8,
                             warmup_epochs=0.0, verbose=0)
    ft_dir = storage.join(gcs_dir, "finetune")
    result = finetune(config, ft_dir)
    assert result["total_steps"] == 2 and result["metrics"]["best_model"].startswith("gs://")
    for name in ("result.json", "model.keras"):
        assert storage.exists(storage.join(ft_dir, name)), name
    assert any("tfevents" in n for n in storage.listdir(storage.join(ft_dir, "tensorboard")))
    model = keras.saving.load_model(storage.fetch_file(storage.join(ft_dir, "model.keras")), compile=False)

    export_dir = export_for_serving(model, storage.join(gcs_dir, "serving"), "tiny",
                                    class_names=result["metrics"]["class_names"], verbose=False)
    assert export_dir == storage.join(gcs_dir, "serving", "tiny", "1")
    assert read_class_names(export_dir) == result["metrics"]["class_names"]
    loaded = tf.saved_model.load(storage.fetch_dir(export_dir))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    probabilities = loaded.signatures["predict_images"](images=tf.constant(images))["probabilities"].numpy()
    batch = np.stack([preprocess.normalize_image(preprocess.eval_image(tf.constant(im), 32, model.crop_fraction))
                      for im in images])
    logits = np.asarray(model(batch, training=False), np.float64)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(-1, keepdims=True), atol=1e-5, rtol=0)

    # The local TF-Serving-compatible server serves the version straight from the bucket, as TF Serving would.
    import json

    from werkzeug.test import Client

    from keras_nfnet.serving.app import ModelServer

    server = ModelServer(storage.join(gcs_dir, "serving", "tiny"), file_system_poll_wait_seconds=0).start()
    try:
        reply = Client(server).post("/v1/models/tiny:predict", json={
            "signature_name": "predict_images", "instances": images.tolist()})
        assert reply.status_code == 200, reply.get_data(as_text=True)
        served = np.array([p["probabilities"] for p in json.loads(reply.get_data())["predictions"]])
        np.testing.assert_allclose(served, probabilities, atol=1e-6, rtol=0)
    finally:
        server.stop()
