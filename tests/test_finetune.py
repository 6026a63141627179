"""Fine-tuning: head replacement, top-k evaluation against numpy, the job end to end, the digits corpus."""
import importlib.util
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet.data import preprocess
from keras_nfnet.data.corpus import CorpusWriter, decode_example, load_metadata
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs import context
from keras_nfnet.jobs import evaluate as ev
from keras_nfnet.jobs import finetune as ft
from keras_nfnet.jobs import sources
from keras_nfnet.models import NFNet
from keras_nfnet.training.checkpoint import CheckpointManager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus(path, n_train=40, n_test=21, num_classes=6, size=32, seed=0, undecodable=()):
    """Images whose mean colour encodes the class (learnable), PNG, splits train/test. Examples numbered in
    `undecodable` keep their PNG magic and IEND chunk but get damaged image data (only the decoder can tell)."""
    rng = np.random.default_rng(seed)
    with CorpusWriter(str(path), num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)],
                      image_format="png") as writer:
        for i in range(n_train + n_test):
            label = i % num_classes
            base = np.array([label * 40, 255 - label * 40, (label * 90) % 256], np.float32)
            image = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            png = bytearray(tf.io.encode_png(image).numpy())
            if i in undecodable:
                start = png.index(b"IDAT") + 4
                png[start:start + 12] = b"\xff" * 12
            writer.add("train" if i < n_train else "test", bytes(png), [label], i)
    return str(path)


def _pretrain_workdir(path, num_classes=20):
    """A pretraining work directory as the pretraining job leaves it: config.json + one checkpoint."""
    keras.utils.set_random_seed(3)
    model = NFNet("tiny", num_classes=num_classes, input_shape=(32, 32, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"variant": "tiny", "image_size": 32}, f)
    CheckpointManager(os.path.join(path, "checkpoints")).save(model, 5, {"note": "test"})
    return str(path), model


def test_replace_head_copies_every_weight_but_the_classifier(tmp_path):
    workdir, pretrained = _pretrain_workdir(tmp_path / "pre")
    loaded = sources.load_model(workdir)
    assert loaded.num_classes == 20
    for a, b in zip(pretrained.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    model, copied = ft.replace_head(loaded, 7, dropout_rate=0.3, stochastic_depth_rate=0.1)
    with_weights = [layer.name for layer in model.layers if layer.weights]
    assert sorted(copied) == sorted(n for n in with_weights if n != "classifier")
    for name in copied:
        for a, b in zip(model.get_layer(name).weights, pretrained.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert model.get_layer("classifier").kernel.shape == (pretrained.get_layer("classifier").kernel.shape[0], 7)
    assert model.get_layer("dropout").rate == 0.3
    assert model.blocks[-1].stochastic_depth_rate > 0
    # Resolution-agnostic: the same weights run at the pretraining and at higher resolutions.
    for size in (32, 48, 64):
        assert model(np.zeros((1, size, size, 3), np.float32)).shape == (1, 7)


def test_topk_accuracy_matches_numpy(tmp_path):
    corpus = _corpus(tmp_path / "c", n_test=21)
    keras.utils.set_random_seed(0)
    model = NFNet("tiny", num_classes=6)
    model.get_layer("classifier").kernel.assign(np.random.default_rng(1).normal(0, 2, (32, 6)).astype("float32"))
    got = ev.topk_accuracy(model, corpus, "test", 32, batch_size=8)  # 21 = 2 full batches + a padded one

    # Independent reference: read the records in corpus order, evaluation preprocessing per image, numpy ranks.
    info = load_metadata(corpus)
    images, labels = [], []
    for shard in info.split("test").shard_paths(corpus):
        for record in tf.data.TFRecordDataset(shard).as_numpy_iterator():
            example = decode_example(record)
            image = preprocess.eval_image(preprocess.decode_image(example["image"]), 32)
            images.append(preprocess.normalize_image(image).numpy())
            labels.append(example["labels"][0])
    logits = model.predict(np.stack(images), verbose=0)
    ranks = np.argsort(-logits, axis=-1)
    labels = np.array(labels)
    assert got["examples"] == 21
    assert got["top1"] == pytest.approx(np.mean(ranks[:, 0] == labels))
    assert got["top5"] == pytest.approx(np.mean((ranks[:, :5] == labels[:, None]).any(axis=1)))
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert got["loss"] == pytest.approx(-np.mean(log_softmax[np.arange(21), labels]), rel=1e-4)


def test_evaluate_job_under_mirrored_matches_one_device_and_logs_to_tensorboard(tmp_path):
    corpus = _corpus(tmp_path / "c", n_test=21)
    keras.utils.set_random_seed(0)
    model = NFNet("tiny", num_classes=6)
    model.get_layer("classifier").kernel.assign(np.random.default_rng(1).normal(0, 2, (32, 6)).astype("float32"))
    path = str(tmp_path / "m.keras")
    model.save(path)
    one = ev.evaluate(config_lib.load("evaluate", model=path, corpus=corpus, batch_size=8), str(tmp_path / "one"))
    two = ev.evaluate(config_lib.load("evaluate", model=path, corpus=corpus, batch_size=8, strategy="mirrored",
                                      num_cpu_devices=2), str(tmp_path / "two"))
    for name in ("top1", "top5", "loss"):  # 21 examples: the padded last batch is split over the 2 replicas too
        assert two["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5)
    assert two["metrics"]["examples"] == one["metrics"]["examples"] == 21
    events = tf.io.gfile.glob(str(tmp_path / "two" / "tensorboard" / "events.out.tfevents.*"))
    tags = {v.tag: tf.make_ndarray(v.tensor) for e in tf.compat.v1.train.summary_iterator(events[0])
            for v in e.summary.value}
    assert float(tags["eval/test/top1"]) == pytest.approx(two["metrics"]["top1"])
    with pytest.raises(ValueError, match="not divisible by the 2 replicas"):
        ev.evaluate(config_lib.load("evaluate", model=path, corpus=corpus, batch_size=7, strategy="mirrored",
                                    num_cpu_devices=2), str(tmp_path / "bad"))


def test_finetune_job_end_to_end(tmp_path):
    """Pretrained checkpoint -> new head -> SAM + AGC + EMA + repeated augmentation at a higher resolution ->
    results file whose numbers are re-computed here from the saved models."""
    corpus = _corpus(tmp_path / "c", n_train=48, n_test=18)
    workdir, _ = _pretrain_workdir(tmp_path / "pre")
    config = config_lib.load("finetune", source=workdir, corpus=corpus, image_size=48, eval_image_size=64,
                             epochs=1.75, global_batch_size=16, base_learning_rate=2.0, warmup_epochs=0.5,
                             agc_clip=0.04, sam_rho=0.05, repeats=2, ema=True, ema_max_decay=0.999, crop=False,
                             verbose=0)
    out = str(tmp_path / "ft")
    result = ft.finetune(config, out)
    with open(os.path.join(out, context.RESULT_FILE)) as f:
        everything = json.load(f)
    assert everything == result and everything["job"] == "finetune" and everything["status"] == "done"
    saved = everything["metrics"]
    # 1.75 epochs of 48 images at batch 16 = 5.25 -> 5 steps: intervals of 3 steps, the last one cut at step 5.
    assert everything["total_steps"] == 5 and everything["step"] == 5 and saved["eval_image_size"] == 64
    assert everything["config"] == config_lib.as_dict(config)
    assert saved["class_names"] == [f"c{i}" for i in range(6)]
    raw = keras.saving.load_model(os.path.join(out, "model.keras"), compile=False)
    ema = keras.saving.load_model(os.path.join(out, "model_ema.keras"), compile=False)
    # The two saved models really are different weights (the EMA is not the final iterate).
    assert max(np.abs(a.numpy() - b.numpy()).max() for a, b in zip(raw.weights, ema.weights)) > 1e-6
    for model, key in ((raw, ""), (ema, "_ema")):
        again = ev.topk_accuracy(model, corpus, "test", 64, batch_size=7)
        assert saved["top1" + key] == pytest.approx(again["top1"])
        assert saved["top5" + key] == pytest.approx(again["top5"])
    assert 0.0 <= saved["top1"] <= saved["top5"] <= 1.0
    # The evaluation job on the fine-tuning workdir: its better model, in the evaluation view stored in it.
    evaluated = ev.evaluate(config_lib.load("evaluate", model=out, corpus=corpus, batch_size=5), str(tmp_path / "ev"))
    key = "" if saved["best_weights"] == "raw" else "_ema"
    assert evaluated["job"] == "evaluate" and evaluated["metrics"]["image_size"] == 64
    assert evaluated["metrics"]["top1"] == pytest.approx(saved["top1" + key])
    assert evaluated["metrics"]["examples"] == 18
    assert json.load(open(tmp_path / "ev" / "result.json")) == evaluated
    assert any(name.startswith("events") for name in os.listdir(os.path.join(out, "tensorboard")))


@pytest.mark.parametrize("change, message", [
    ({"corpus": "/nonexistent"}, "corpus must be a corpus directory"),
    ({"corpus": "/nonexistent", "warmup_epochs": -1.0}, "(?s)corpus must be a corpus.*warmup_epochs must be"),
    ({"variant": "F99"}, "needs variant"),
    ({"from_scratch": False}, "give source .* or from_scratch"),
    ({"source": "/some/run"}, "either source .* or from_scratch"),
    ({"crop_fraction": 1.5}, "crop_fraction must be in"),
    ({"warmup_epochs": -1.0}, "warmup_epochs must be >= 0"),
    ({"repeats": 3}, "divide global_batch_size"),
    ({"sam_reduction": "mean"}, "sam_reduction"),
    ({"source": "/nonexistent/run", "from_scratch": False}, "does not exist"),
])
def test_bad_config(tmp_path, change, message):
    fields = dict(corpus=_corpus(tmp_path / "c", 6, 6), variant="tiny", from_scratch=True, global_batch_size=16)
    config = config_lib.load("finetune", **dict(fields, **change))
    with pytest.raises(ValueError, match=message):
        ft.finetune(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_digits_corpus(tmp_path):
    spec = importlib.util.spec_from_file_location("make_digits", os.path.join(REPO, "datasets", "make_digits.py"))
    make_digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_digits)
    counts = make_digits.make_digits_corpus(str(tmp_path / "d"), image_size=24)
    assert counts == {"train": 1347, "test": 450}  # sklearn's 1,797 digits, 25% of each class held out
    info = load_metadata(str(tmp_path / "d"))
    assert info.num_classes == 10 and info.class_names[3] == "three"
    test_freq = np.array(info.split("test").label_frequencies)
    train_freq = np.array(info.split("train").label_frequencies)
    assert test_freq.sum() == 450 and (np.abs(test_freq / (test_freq + train_freq) - 0.25) < 0.01).all()
    first = decode_example(next(tf.data.TFRecordDataset(info.split("train").shard_paths(str(tmp_path / "d"))[0])
                                .as_numpy_iterator()))
    image = tf.io.decode_png(first["image"]).numpy()
    assert image.shape == (24, 24, 3) and image[:2].max() == 0  # blank margin around the digit


def test_an_image_the_decoder_rejects_is_named_in_training_and_in_evaluation(tmp_path):
    corpus = _corpus(tmp_path / "c", n_train=16, n_test=8, undecodable=(5, 16 + 3))
    config = config_lib.load("finetune", corpus=corpus, variant="tiny", from_scratch=True, image_size=32,
                             eval_image_size=32, epochs=1.0, global_batch_size=8, warmup_epochs=0.0, verbose=0)
    with pytest.raises(ValueError, match=r"^bad record: split train shard train-00000.tfrecord record 5: TensorFlow's "
                                         r"decoder rejects the image \(Invalid PNG"):
        ft.finetune(config, str(tmp_path / "w"))
    with pytest.raises(ValueError, match=r"^bad record: split test shard test-00000.tfrecord record 3: TensorFlow's "
                                         r"decoder rejects the image \(Invalid PNG"):
        ev.topk_accuracy(NFNet("tiny", num_classes=6), corpus, "test", 32, batch_size=4)



def test_divergence_stops_fine_tuning_and_writes_no_result(tmp_path):
    """The jobs' shared divergence stop (the commands exit with status 3 on it: tests/test_scaling_sweep_trainer.py)."""
    from keras_nfnet.training.callbacks import TrainingDiverged

    config = config_lib.load("finetune", corpus=_corpus(tmp_path / "c", n_train=16, n_test=4), from_scratch=True,
                             variant="tiny", image_size=32, epochs=2.0, global_batch_size=8, base_learning_rate=1e9,
                             agc_clip=0.0, warmup_epochs=0.0, sam_rho=0.0, ema=False, verbose=0)
    with pytest.raises(TrainingDiverged, match=r"training diverged: the loss became (nan|inf) at step [12]\. The last "
                                                r"good checkpoint .* Lower base_learning_rate"):
        ft.finetune(config, str(tmp_path / "w"))
    assert not (tmp_path / "w" / "result.json").exists() and not (tmp_path / "w" / "model.keras").exists()
