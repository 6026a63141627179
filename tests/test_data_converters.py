"""Converters, on real images that ship inside PyPI wheels (scikit-learn digits, scikit-image photos) and a
TFDS dataset mocked offline. Nothing is downloaded."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_nfnet.jobs import defaults
from keras_nfnet.jobs.evaluate import find_eval_split
from keras_nfnet.data import convert, corpus, records, verify
from keras_nfnet.data.pipeline import eval_dataset, train_dataset


def _records(d, split):
    info = corpus.load_metadata(d)
    reader = records.RecordReader(info.split(split).shard_paths(d))
    return [corpus.decode_example(reader.read(i)) for i in range(reader.num_records)]


def test_image_folder_from_sklearn_digits_stores_png_bytes_and_labels(tmp_path):
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
            truth[(cls, (src / str(cls) / f"{k:02d}.png").read_bytes())] = pixels
    out = str(tmp_path / "corpus")
    stats = convert.convert_image_folder(str(src), out, test_fraction=0.25, examples_per_shard=5)  # default: auto
    info = corpus.load_metadata(out)
    assert info.class_names == ("0", "1", "2") and not info.multi_label and info.image_format == "png"
    assert info.split_sizes == {"train": 18, "test": 6} == stats["splits"] and stats["formats"] == {"png": 24}
    assert verify.verify(out, deep=True) == []
    found = 0
    for split in ("train", "test"):
        for ex in _records(out, split):
            # Lossless: the stored bytes are the file's bytes, and the label is its folder.
            assert (ex["labels"][0], ex["image"]) in truth and ex["format"] == "png"
            pixels = tf.io.decode_png(ex["image"]).numpy()[..., 0]
            np.testing.assert_array_equal(pixels, truth[(ex["labels"][0], ex["image"])])
            found += 1
    assert found == 24
    test_labels = [ex["labels"][0] for ex in _records(out, "test")]
    assert sorted(test_labels) == [0, 0, 1, 1, 2, 2]  # stratified
    # The fine-tuning job evaluates "test" by default: the converter's held-out split is found without flags.
    assert find_eval_split(info) == "test"
    x, y, w = next(iter(eval_dataset(out, "test", 6, 32)))
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
        convert.convert_image_folder(str(src), out, test_fraction=0.0, image_format="jpeg")
    # The failed conversion left nothing behind (no corpus, no partial folder), so the same command runs again.
    assert sorted(os.listdir(tmp_path)) == ["photos"]
    stats = convert.convert_image_folder(str(src), out, test_fraction=0.0, on_bad_image="skip", image_format="jpeg")
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
    with pytest.raises(ValueError, match="has no sub-folders"):
        convert.convert_image_folder(str(tmp_path / "empty"), str(tmp_path / "o"))
    (tmp_path / "empty" / "cls").mkdir()
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="neither images nor class folders"):
        convert.convert_image_folder(str(tmp_path / "empty"), str(tmp_path / "o"))
    (tmp_path / "empty" / "cls" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="no images found .*1 files could not be decoded"):
        convert.convert_image_folder(str(tmp_path / "empty"), str(tmp_path / "o"), on_bad_image="skip")
    assert not os.path.exists(tmp_path / "o") and sorted(os.listdir(tmp_path)) == ["empty"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty directory"):
        convert.convert_image_folder(str(tmp_path / "empty"), str(tmp_path / "full"))


def test_tfds_converter_on_mocked_mnist(tmp_path):
    import tensorflow_datasets as tfds

    out = str(tmp_path / "mnist")
    with tfds.testing.mock_data(num_examples=10):
        reference = [(ex["image"], int(ex["label"])) for ex in tfds.as_numpy(tfds.load("mnist", split="train"))]
        stored = [ex["image"] for ex in tfds.as_numpy(tfds.load(
            "mnist", split="train", decoders={"image": tfds.decode.SkipDecoding()}))]
        stats = convert.convert_tfds("mnist", out, splits=["train", "test"])
    info = corpus.load_metadata(out)
    assert info.num_classes == 10 and info.class_names[3] == "3"
    assert info.split_sizes == {"train": 10, "test": 10} and stats["images"] == 20
    # TFDS stores mnist as PNG: the corpus holds those bytes unchanged (no decode and re-encode).
    assert [ex["image"] for ex in _records(out, "train")] == stored and stored[0][:4] == b"\x89PNG"
    assert find_eval_split(info) == "test"
    got = [(tf.io.decode_png(ex["image"]).numpy(), ex["labels"][0]) for ex in _records(out, "train")]
    for (ref_img, ref_label), (img, label) in zip(reference, got):
        np.testing.assert_array_equal(img, ref_img)
        assert label == ref_label
    with pytest.raises(ValueError, match="no feature 'caption'"):
        convert.convert_tfds("mnist", str(tmp_path / "x"), label_key="caption")


def _write_split_folders(root):
    """root/<split>/<class>/<n>.png from scikit-image's photos (3 classes) and scikit-learn's sample photos, as a
    user keeps a collection that already has its splits; returns {(split, class): [file bytes]}."""
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = {"cat": skdata.chelsea(), "cup": skdata.coffee(), "rocket": skdata.rocket(),
              "temple": load_sample_images().images[0]}
    files = {}
    for split, offsets in {"train": (0, 40, 80), "test": (20,), "validation": (60,)}.items():
        for name, photo in photos.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for k, off in enumerate(offsets):
                crop = photo[off:off + 96, off:off + 128]
                Image.fromarray(crop).save(folder / f"{k}.png")
                files.setdefault((split, name), []).append((folder / f"{k}.png").read_bytes())
    return files


def test_split_folders_become_corpus_splits_with_one_class_list_and_lossless_bytes(tmp_path):
    files = _write_split_folders(tmp_path / "photos")
    (tmp_path / "photos" / "validation" / "zebra").mkdir()  # a class seen in one split only
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(tmp_path / "photos" / "validation" / "zebra" / "z.bmp")
    out = str(tmp_path / "corpus")
    stats = convert.convert_image_folder(str(tmp_path / "photos"), out, test_fraction=0.5)  # no effect here
    info = corpus.load_metadata(out)
    assert info.class_names == ("cat", "cup", "rocket", "temple", "zebra")
    assert info.split_sizes == stats["splits"] == {"train": 12, "test": 4, "validation": 5}
    assert stats["formats"] == {"png": 21} and info.image_format == "png"
    for split in ("train", "test", "validation"):
        for ex in _records(out, split):
            name = info.class_names[ex["labels"][0]]
            if name == "zebra":  # BMP: re-encoded as PNG, losslessly
                np.testing.assert_array_equal(tf.io.decode_png(ex["image"]).numpy(), np.full((20, 20, 3), 7))
            else:
                assert ex["image"] in files[(split, name)]  # byte for byte
    # The jobs find the splits by their default names: train for training, test for evaluation.
    assert defaults.finetune().train_split == "train" and find_eval_split(info) == "test"
    x, y = next(iter(train_dataset(out, "train", 4, 32, seed=0)))
    assert x.shape == (4, 32, 32, 3)
    assert verify.verify(out, deep=True) == []


def test_an_interrupted_conversion_leaves_no_corpus_and_the_rerun_works(tmp_path, monkeypatch):
    _write_split_folders(tmp_path / "photos")
    out = tmp_path / "corpus"
    out.mkdir()  # an empty target folder is fine
    real = convert.stored_bytes
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt  # Ctrl-C in the middle, after shards were written
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "stored_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_image_folder(str(tmp_path / "photos"), str(out), examples_per_shard=2)
    assert os.listdir(out) == [] and sorted(os.listdir(tmp_path)) == ["corpus", "photos"]
    monkeypatch.setattr(convert, "stored_bytes", real)
    stats = convert.convert_image_folder(str(tmp_path / "photos"), str(out), examples_per_shard=2)
    assert stats["images"] == 20 and corpus.load_metadata(str(out)).split_sizes["train"] == 12
    assert verify.verify(str(out), deep=True) == []


def test_tfds_conversion_that_fails_leaves_no_corpus(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    out = str(tmp_path / "mnist")
    real, calls = convert.stored_bytes, []

    def damaged_second_split(data, *args, **kwargs):
        calls.append(1)
        return real(data[:40] if len(calls) == 8 else data, *args, **kwargs)  # a truncated image in "test"

    with tfds.testing.mock_data(num_examples=6):
        monkeypatch.setattr(convert, "stored_bytes", damaged_second_split)
        with pytest.raises(ValueError, match="TFDS mnist test example 1 cannot be decoded"):
            convert.convert_tfds("mnist", out, splits=["train", "test"], examples_per_shard=2)
        assert not os.path.exists(out) and os.listdir(tmp_path) == []
        monkeypatch.setattr(convert, "stored_bytes", real)
        # The same command again works; name=spec names the corpus splits (the mock ignores the slicing).
        stats = convert.convert_tfds("mnist", out, splits=["train=train[:4]", "test=train[4:]"])
    assert sorted(stats["splits"]) == ["test", "train"] == sorted(corpus.load_metadata(out).splits)
