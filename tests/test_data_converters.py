"""Converters, on real images that ship inside PyPI wheels (scikit-learn digits, scikit-image photos) and a
TFDS dataset mocked offline. Nothing is downloaded."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_nfnet.data import convert, corpus, records, verify
from keras_nfnet.data.pipeline import eval_dataset


def _records(d, split):
    info = corpus.load_metadata(d)
    reader = records.RecordReader(info.split(split).shard_paths(d))
    return [corpus.decode_example(reader.read(i)) for i in range(reader.num_records)]


def test_image_folder_from_sklearn_digits_round_trips_pixels_and_labels(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    src = tmp_path / "digits"
    truth = {}
    for cls in (0, 1, 2):
        (src / str(cls)).mkdir(parents=True)
        images = digits.images[digits.target == cls][:8]
        for k, img in enumerate(images):
            pixels = np.kron((img * 255 / 16).astype(np.uint8), np.ones((4, 4), np.uint8))  # 32x32 grey
            Image.fromarray(pixels).save(src / str(cls) / f"{k:02d}.png")
            truth[(cls, pixels.tobytes())] = True
    out = str(tmp_path / "corpus")
    stats = convert.convert_image_folder(str(src), out, holdout_fraction=0.25, image_format="png",
                                         examples_per_shard=5)
    info = corpus.load_metadata(out)
    assert info.class_names == ("0", "1", "2") and not info.multi_label
    assert info.split_sizes == {"train": 18, "holdout": 6} == stats["splits"]
    assert verify.verify(out, deep=True) == []
    found = 0
    for split in ("train", "holdout"):
        for ex in _records(out, split):
            pixels = tf.io.decode_png(ex["image"]).numpy()[..., 0]
            assert (ex["labels"][0], pixels.tobytes()) in truth  # same pixels, label = its folder
            found += 1
    assert found == 24
    holdout_labels = [ex["labels"][0] for ex in _records(out, "holdout")]
    assert sorted(holdout_labels) == [0, 0, 1, 1, 2, 2]  # stratified
    x, y, w = next(iter(eval_dataset(out, "holdout", 6, 32)))
    assert x.shape == (6, 32, 32, 3) and float(tf.reduce_sum(w)) == 6
    assert sorted(np.argmax(y.numpy(), 1).tolist()) == [0, 0, 1, 1, 2, 2]


def test_image_folder_from_skimage_photos_keeps_jpeg_bytes_and_reencodes_others(tmp_path):
    from skimage import data as skdata

    src = tmp_path / "photos"
    for cls, images in {"cat": [skdata.chelsea()], "cup": [skdata.coffee()], "grey": [skdata.camera()]}.items():
        (src / cls).mkdir(parents=True)
        for k, img in enumerate(images):
            if cls == "grey":
                Image.fromarray(img).save(src / cls / f"{k}.png")
            else:
                Image.fromarray(img).save(src / cls / f"{k}.jpg", quality=90)
    (src / "cup" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    # a valid JPEG with bytes appended after its end marker (as some cameras write): stored without them
    (src / "cup" / "trailing.jpg").write_bytes((src / "cup" / "0.jpg").read_bytes() + b"camera trailer")
    out = str(tmp_path / "corpus")
    with pytest.raises(ValueError, match=r"broken.jpg cannot be decoded"):
        convert.convert_image_folder(str(src), out, holdout_fraction=0.0)
    out = str(tmp_path / "corpus2")
    stats = convert.convert_image_folder(str(src), out, holdout_fraction=0.0, on_bad_image="skip")
    assert len(stats["skipped"]) == 1 and "broken.jpg" in stats["skipped"][0]
    cups = [ex["image"] for ex in _records(out, "train") if ex["labels"][0] == 1]
    assert cups == [(src / "cup" / "0.jpg").read_bytes()] * 2  # trailer removed, image bytes kept
    exs = {ex["labels"][0]: ex for ex in _records(out, "train")}
    assert exs[0]["image"] == (src / "cat" / "0.jpg").read_bytes()  # stored byte for byte
    grey = tf.io.decode_image(exs[2]["image"], channels=3).numpy()  # PNG re-encoded to JPEG, 3 channels
    assert exs[2]["image"][:3] == b"\xff\xd8\xff" and grey.shape == (512, 512, 3)
    assert np.abs(grey[..., 0].astype(int) - skdata.camera().astype(int)).mean() < 3


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert.convert_image_folder(str(tmp_path / "missing"), str(tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        convert.convert_image_folder(str(tmp_path / "empty"), str(tmp_path / "o"))


def test_tfds_converter_on_mocked_mnist(tmp_path):
    import tensorflow_datasets as tfds

    out = str(tmp_path / "mnist")
    with tfds.testing.mock_data(num_examples=10):
        reference = [(ex["image"], int(ex["label"])) for ex in tfds.as_numpy(tfds.load("mnist", split="train"))]
        stats = convert.convert_tfds("mnist", out, splits=["train", "test"], image_format="png")
    info = corpus.load_metadata(out)
    assert info.num_classes == 10 and info.class_names[3] == "3"
    assert info.split_sizes == {"train": 10, "test": 10} and stats["images"] == 20
    got = [(tf.io.decode_png(ex["image"]).numpy(), ex["labels"][0]) for ex in _records(out, "train")]
    for (ref_img, ref_label), (img, label) in zip(reference, got):
        np.testing.assert_array_equal(img, ref_img)
        assert label == ref_label
    with pytest.raises(ValueError, match="no feature 'caption'"):
        convert.convert_tfds("mnist", str(tmp_path / "x"), label_key="caption")
