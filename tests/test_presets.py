"""keras-hub-shaped model API: backbone feature maps per stage, the classifier task (new head on a backbone,
float32 head under mixed precision, .keras round trip), the image converter against TensorFlow's evaluation view,
presets (from a converted timm checkpoint back to timm's logits), export to a SavedModel with the numerics kept,
the convert_weights app, and fine-tuning's --source accepting a preset."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_nfnet.backbone import NFNetBackbone
from keras_nfnet.classifier import Classifier, NFNetImageClassifier
from keras_nfnet.converters import infer_variant, load_checkpoint
from keras_nfnet.converters.tensor_files import read_tensors
from keras_nfnet.image_converter import NFNetImageConverter
from keras_nfnet import presets
from keras_nfnet.variants import get_variant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "timm_nfnet_small")


def relative_error(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE + ".npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def converted():
    row = infer_variant(read_tensors(FIXTURE + ".safetensors"), name="small", test_image_size=64)
    return load_checkpoint(FIXTURE + ".safetensors", variant=row)


def test_backbone_feature_maps_per_stage():
    row = get_variant("tiny")
    backbone = NFNetBackbone("tiny")
    extractor = backbone.feature_pyramid()
    out = extractor.predict(np.zeros((2, 64, 64, 3), np.float32), verbose=0)
    # stem stride 4, then the stage strides; channels = the stage widths
    stride, expected = 4, {}
    for s, width in zip(row.strides, row.widths):
        stride *= s
        expected[f"P{int(np.log2(stride))}"] = (2, 64 // stride, 64 // stride, width)
    assert {k: v.shape for k, v in out.items()} == expected == {
        "P2": (2, 16, 16, 8), "P3": (2, 8, 8, 16), "P4": (2, 4, 4, 16), "P5": (2, 2, 2, 16)}
    final = backbone.predict(np.zeros((2, 64, 64, 3), np.float32), verbose=0)
    assert final.shape == (2, 2, 2, 2 * row.widths[-1])


def test_new_head_on_pretrained_backbone_shares_its_weights(converted, reference):
    pretrained = converted.classifier()
    head = Classifier(backbone=pretrained.backbone, num_classes=3)
    assert head.backbone is pretrained.backbone
    features = keras.Model(pretrained.input, pretrained.get_layer("pooler").output)
    pooled = features.predict(reference["images"], verbose=0)
    kernel, bias = [np.asarray(w) for w in head.get_layer("classifier").weights]
    np.testing.assert_allclose(head.predict(reference["images"], verbose=0), pooled @ kernel + bias, rtol=1e-5,
                               atol=1e-6)


def test_classifier_save_load_keeps_weights_numerics_and_preprocessing(tmp_path, converted, reference):
    model = converted.classifier(class_names=list("abcdefg"), crop_fraction=0.875)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, NFNetImageClassifier) and loaded.numerics == "timm"
    assert loaded.class_names == list("abcdefg") and loaded.crop_fraction == 0.875
    assert relative_error(loaded.predict(reference["images"], verbose=0), reference["logits_timm"]) < 1e-4


def test_mixed_precision_keeps_a_float32_head():
    backbone = NFNetBackbone("tiny", dtype="mixed_bfloat16")
    model = NFNetImageClassifier(backbone, 4, activation="softmax")
    out = model(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32))
    assert backbone.output.dtype == "bfloat16" and keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(out).sum(-1), 1.0, rtol=1e-5)


def test_preset_round_trip_gives_timms_logits(tmp_path, converted, reference):
    model = converted.classifier(class_names=[f"class_{i}" for i in range(7)])
    preset = str(tmp_path / "small_timm")
    presets.save_preset(model, preset, source={"checkpoint": "timm_nfnet_small.safetensors"})
    assert sorted(os.listdir(preset)) == sorted([
        "config.json", "model.weights.h5", "task.json", "task.weights.h5", "image_converter.json", "metadata.json"])
    loaded = presets.from_preset(preset)
    assert loaded.class_names == [f"class_{i}" for i in range(7)] and loaded.numerics == "timm"
    assert relative_error(loaded.predict(reference["images"], verbose=0), reference["logits_timm"]) < 1e-4
    backbone = NFNetBackbone.from_preset(preset)
    np.testing.assert_array_equal(np.asarray(backbone.get_layer("final_conv").kernel),
                                  np.asarray(loaded.backbone.get_layer("final_conv").kernel))
    retargeted = NFNetImageClassifier.from_preset(preset, num_classes=3)
    assert retargeted.num_classes == 3 and retargeted.class_names is None
    with pytest.raises(ValueError, match="already exists"):
        presets.save_preset(model, preset)
    with pytest.raises(ValueError, match="not a preset directory"):
        presets.from_preset(str(tmp_path))


def test_preset_in_a_bucket_round_trips(gcs_dir, tmp_path, converted, reference):
    """save_preset/from_preset on the GCS emulator give the same weights and logits as a local preset."""
    model = converted.classifier(class_names=[f"class_{i}" for i in range(7)])
    remote = gcs_dir + "/small_timm"
    assert not presets.is_preset(remote)
    presets.save_preset(model, remote)
    assert presets.is_preset(remote)
    loaded = presets.from_preset(remote)
    assert relative_error(loaded.predict(reference["images"], verbose=0), reference["logits_timm"]) < 1e-4
    presets.save_preset(model, str(tmp_path / "local"))
    local = presets.from_preset(str(tmp_path / "local"))
    for a, b in zip(loaded.weights, local.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert NFNetImageClassifier.from_preset(remote, num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match="already exists"):
        presets.save_preset(model, remote)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        presets.from_preset(gcs_dir + "/nothing_here")


def tf_eval_view(images, size, crop_fraction):
    """The evaluation view as issue 11 defines it, in TensorFlow: resize the whole image (bicubic, antialias) to
    round(size / crop_fraction), clip to [0, 255], centre-crop size, normalise."""
    import tensorflow as tf

    side = size + 32 if crop_fraction is None else max(size, int(round(size / crop_fraction)))
    x = tf.clip_by_value(tf.image.resize(tf.cast(images, tf.float32), [side, side], "bicubic", antialias=True),
                         0.0, 255.0)
    top = (side - size) // 2
    x = x[:, top:top + size, top:top + size, :]
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    return ((x.numpy() - mean) / std).astype(np.float32)


@pytest.mark.parametrize("crop_fraction", [1.0, 0.875, None])
def test_image_converter_matches_the_tensorflow_eval_view(crop_fraction):
    from skimage import data

    images = np.stack([data.astronaut()[:128, :128], data.chelsea()[:128, :128]])  # real photos, uint8
    converter = NFNetImageConverter(48, crop_fraction)
    out = np.asarray(converter(images))
    assert out.shape == (2, 48, 48, 3)
    np.testing.assert_allclose(out, tf_eval_view(images, 48, crop_fraction), atol=1e-3)


def test_export_keeps_numerics_and_runs_the_converter(tmp_path, converted, reference):
    import tensorflow as tf

    model = converted.classifier()
    path = str(tmp_path / "saved")
    model.export(path, format="tf_saved_model")
    served = tf.saved_model.load(path)
    logits = served.serve(tf.constant(reference["images"])).numpy()
    assert relative_error(logits, reference["logits_timm"]) < 1e-4
    end_to_end = model.with_preprocessing()
    raw = np.random.default_rng(0).integers(0, 256, size=(2, 80, 80, 3)).astype(np.uint8)
    expected = model.predict(tf_eval_view(raw, 64, None), verbose=0)
    path = str(tmp_path / "saved_raw")
    end_to_end.export(path, format="tf_saved_model")
    served_raw = tf.saved_model.load(path)  # keep a reference: its variables die with the object
    got = served_raw.serve(tf.constant(raw, tf.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_convert_weights_app_writes_a_preset(tmp_path, reference):
    out = tmp_path / "preset"
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"n{i}" for i in range(7)) + "\n")
    cmd = [sys.executable, "trainers/convert_weights.py", f"--checkpoint={FIXTURE}.pth", f"--output={out}",
           "--variant=infer", "--image_size=64", "--crop_fraction=1.0", f"--class_names={names}"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "timm layout" in result.stdout and "numerics timm" in result.stdout
    loaded = presets.from_preset(str(out))
    assert loaded.class_names[-1] == "n6" and loaded.crop_fraction == 1.0 and loaded.image_converter.image_size == 64
    assert relative_error(loaded.predict(reference["images"], verbose=0), reference["logits_timm"]) < 1e-4
    bad = subprocess.run(cmd[:2] + [f"--checkpoint={FIXTURE}.pth", f"--output={tmp_path / 'other'}",
                                    "--variant=tiny"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "stem.conv1.weight has shape" in bad.stderr


def test_finetune_loads_a_preset_as_source(tmp_path, converted, reference):
    from keras_nfnet.jobs.finetune import replace_head
    from keras_nfnet.jobs.sources import load_model as load_pretrained

    preset = str(tmp_path / "p")
    presets.save_preset(converted.classifier(), preset)
    pretrained = load_pretrained(preset)
    assert pretrained.numerics == "timm"
    assert relative_error(pretrained.predict(reference["images"], verbose=0), reference["logits_timm"]) < 1e-4
    model, copied = replace_head(pretrained, 3, stochastic_depth_rate=0.0, dropout_rate=0.0)
    assert model.numerics == "timm" and "final_conv" in copied
