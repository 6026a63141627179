"""One evaluation view, owned by the model: the same fine-tuned weights give the same top-1 through the fine-tuning
job's evaluation, the exported SavedModel and the server, for the whole-image view and the papers' crop; and a
saved model loads in a fresh process after only `import keras_nfnet`."""
import base64
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from werkzeug.test import Client

from keras_nfnet import export
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs import finetune as ft
from keras_nfnet.data import preprocess
from keras_nfnet.data.corpus import CorpusWriter, decode_example, load_metadata
from keras_nfnet.serving import ModelServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 4


def _frame_filling_corpus(path, n_train=32, n_test=24, size=40):
    """Images whose content fills the frame up to the border: the class is the orientation of a stripe pattern
    that covers the whole image, with a class-dependent frame a few pixels wide that a centre crop cuts off."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    with CorpusWriter(str(path), num_classes=NUM_CLASSES, class_names=["h", "v", "d", "a"]) as writer:
        for i in range(n_train + n_test):
            label = i % NUM_CLASSES
            phase = rng.uniform(0, 6.3)
            wave = [np.sin(yy / 2.5 + phase), np.sin(xx / 2.5 + phase), np.sin((xx + yy) / 3.0 + phase),
                    np.sin((xx - yy) / 3.0 + phase)][label]
            image = np.stack([120 + 100 * wave, 120 - 80 * wave, np.full_like(wave, 60.0 * label)], -1)
            border = (np.minimum(np.minimum(yy, xx), np.minimum(size - 1 - yy, size - 1 - xx)) < 5)
            image[border] = [255 * (label % 2), 255 * (label // 2), 128]
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            writer.add("train" if i < n_train else "test", tf.io.encode_png(image).numpy(), [label], i)
    return str(path)


def _test_split(corpus):
    info = load_metadata(corpus)
    out = []
    for shard in info.split("test").shard_paths(corpus):
        for record in tf.data.TFRecordDataset(shard).as_numpy_iterator():
            example = decode_example(record)
            out.append((example["image"], example["labels"][0]))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One from-scratch fine-tuning run per training view: crop=False (whole-image view) and crop=True (the
    papers' view), 40 px training images, a short run with a high learning rate so the weights are not trivial."""
    root = tmp_path_factory.mktemp("view")
    corpus = _frame_filling_corpus(root / "corpus")
    base = config_lib.load("finetune", from_scratch=True, variant="tiny", corpus=corpus, image_size=32, epochs=2.0,
                           global_batch_size=8, base_learning_rate=1.0, warmup_epochs=0.0, sam_rho=0.0, ema=False,
                           flip=False, verbose=0)
    out = {}
    for crop in (False, True):
        workdir = str(root / f"crop_{crop}")
        out[crop] = (ft.finetune(config_lib.override(base, {"crop": crop}), workdir)["metrics"], workdir)
    return corpus, out


@pytest.mark.parametrize("crop", [False, True], ids=["whole_image", "papers_crop"])
def test_same_top1_through_evaluation_export_and_server(runs, tmp_path, crop):
    corpus, by_crop = runs
    result, workdir = by_crop[crop]
    # The view is chosen from the training view and stored with the model.
    expected_view = (32, 1.0) if not crop else (64, 64 / 96)
    assert (result["eval_image_size"], result["crop_fraction"]) == pytest.approx(expected_view)
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"), compile=False)
    assert (model.eval_image_size, model.crop_fraction) == pytest.approx(expected_view)

    # Export with no view arguments: the SavedModel takes the model's own view and says so in its metadata.
    export_dir = export.export_for_serving(model, str(tmp_path / "serving"), "shapes", class_names=["h", "v", "d", "a"],
                                           warmup=False, verbose=False)
    meta = export.read_preprocessing(export_dir)
    assert (meta["image_size"], meta["crop_fraction"]) == pytest.approx(expected_view)
    assert meta["resize_size"] == (32 if not crop else 96)

    examples = _test_split(corpus)
    labels = np.array([label for _, label in examples])
    loaded = tf.saved_model.load(export_dir)
    saved_probs = loaded.signatures["serving_default"](
        image_bytes=tf.constant([image for image, _ in examples]))["probabilities"].numpy()

    server = ModelServer(str(tmp_path / "serving" / "shapes")).start()
    try:
        body = {"instances": [{"b64": base64.b64encode(image).decode("ascii")} for image, _ in examples]}
        response = Client(server).post("/v1/models/shapes:predict", json=body)
    finally:
        server.stop()
    assert response.status_code == 200, response.get_data(as_text=True)
    served_probs = np.array([p["probabilities"] for p in json.loads(response.get_data())["predictions"]])

    # Independent of the job's pipeline: the model called on the documented view, computed here with PIL-free
    # numpy cropping of a TF bicubic resize (offset (resized - size) // 2).
    size, fraction = expected_view
    resized_side = int(round(size / fraction))
    direct = []
    for image, _ in examples:
        decoded = tf.io.decode_png(image, channels=3)
        big = tf.clip_by_value(tf.image.resize(tf.cast(decoded, tf.float32), [resized_side] * 2, "bicubic",
                                               antialias=True), 0, 255).numpy()
        off = (resized_side - size) // 2
        direct.append((big[off:off + size, off:off + size] - preprocess.MEAN_RGB) / preprocess.STDDEV_RGB)
    direct_logits = model.predict(np.stack(direct).astype(np.float32), verbose=0)

    np.testing.assert_allclose(saved_probs, served_probs, atol=1e-6)
    np.testing.assert_allclose(saved_probs, tf.nn.softmax(direct_logits).numpy(), atol=1e-4)
    top1_saved = float(np.mean(saved_probs.argmax(-1) == labels))
    top1_served = float(np.mean(served_probs.argmax(-1) == labels))
    assert result["top1"] == top1_saved == top1_served
    assert result["eval_examples"] == len(examples) == 24

    # The other view gives other predictions for these frame-filling images: the setting really is applied.
    other = 1.0 if crop else 64 / 96
    other_dir = export.export_for_serving(model, str(tmp_path / "serving"), "shapes", crop_fraction=other,
                                          warmup=False, verbose=False)
    other_probs = tf.saved_model.load(other_dir).signatures["serving_default"](
        image_bytes=tf.constant([image for image, _ in examples]))["probabilities"].numpy()
    assert np.abs(other_probs - saved_probs).max() > 1e-3


_LOAD_SCRIPT = r"""
import sys
import keras
import keras_nfnet
model = keras.saving.load_model(sys.argv[1])
print(type(model).__module__, type(model).__name__, model.eval_image_size, model.crop_fraction)
"""


def test_saved_model_loads_in_a_fresh_process_after_import_keras_nfnet(runs):
    _, by_crop = runs
    _, workdir = by_crop[False]
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, os.path.join(workdir, "model.keras")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-4:] == ["keras_nfnet.models", "NFNet", "32", "1.0"]


def test_warmup_longer_than_a_short_run_is_clamped_and_reported(tmp_path, capsys):
    corpus = _frame_filling_corpus(tmp_path / "c", n_train=16, n_test=4)
    config = config_lib.load("finetune", from_scratch=True, variant="tiny", corpus=corpus, image_size=32, epochs=1.0,
                             global_batch_size=8, warmup_epochs=1.0, sam_rho=0.0, ema=False)
    result = ft.finetune(config, str(tmp_path / "w"))
    # 1 epoch of 16 images at batch 8 = 2 steps; a warm-up of one epoch would leave the cosine no step.
    assert result["total_steps"] == 2 and result["metrics"]["warmup_steps"] == 1
    log = capsys.readouterr().out
    assert "warm-up 1 steps (clamped from 2: the run has 2)" in log
    assert "training view: whole image" not in log and "Inception crop" in log and "horizontal flip" in log
    assert "step 2/2 (epoch 1.00/1 of the corpus)" in log and "Epoch " not in log
