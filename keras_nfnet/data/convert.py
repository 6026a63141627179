"""Converters into the corpus format: an image folder (one sub-folder per class) and a TFDS dataset."""
import io
import logging
import os
import re
import time

import numpy as np

from keras_nfnet.data.corpus import CorpusWriter

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_NATIVE = {"jpeg": ("JPEG",), "png": ("PNG",)}


def _encode(image_array, image_format):
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.asarray(image_array, np.uint8).squeeze(-1) if np.ndim(image_array) == 3 and
                          np.shape(image_array)[-1] == 1 else np.asarray(image_array, np.uint8))
    if image_format == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _file_bytes(path, image_format):
    """The file's bytes if it already is in `image_format`, else a re-encoding; ValueError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = img.format
            img.load()  # full decode: catches truncated files now, not at training time
            if kind in _NATIVE[image_format]:
                return _strip_trailing(data, kind)
            if image_format == "jpeg" and img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            buf = io.BytesIO()
            img.save(buf, format="JPEG" if image_format == "jpeg" else "PNG", **(
                {"quality": 95} if image_format == "jpeg" else {}))
            return buf.getvalue()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"image file {path} cannot be decoded: {err}") from err


def _strip_trailing(data, kind):
    """Drop bytes after the end marker (some cameras and editors append data): the pipeline's cheap integrity
    check expects a JPEG to end with its EOI marker and a PNG with its IEND chunk."""
    end = b"\xff\xd9" if kind == "JPEG" else b"IEND\xaeB`\x82"
    if not data.endswith(end):
        cut = data.rfind(end)
        if cut > 0:
            return data[:cut + len(end)]
    return data


def _holdout_mask(count, fraction, rng):
    n_hold = int(round(count * fraction))
    mask = np.zeros(count, bool)
    mask[rng.permutation(count)[:n_hold]] = True
    return mask


def convert_image_folder(src_dir, out_dir, holdout_fraction=0.1, seed=0, image_format="jpeg",
                         examples_per_shard=1024, on_bad_image="raise"):
    """Convert `src_dir/<class name>/<image files>` to a single-label corpus with splits train and holdout.

    Classes are the sorted sub-folder names. A stratified `holdout_fraction` of each class (chosen by `seed`)
    goes to "holdout". Files already in `image_format` are stored byte for byte; others are re-encoded.
    Unreadable files raise ValueError naming the file, or with on_bad_image="skip" are skipped, counted and
    logged. Returns a stats dict (images, skipped, per-split counts, seconds).
    """
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"image folder {src_dir} does not exist")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
    classes = sorted(d for d in os.listdir(src_dir) if os.path.isdir(os.path.join(src_dir, d)))
    if not classes:
        raise ValueError(f"{src_dir} has no class sub-folders (expected {src_dir}/<class name>/<images>)")
    rng = np.random.default_rng(seed)
    start, next_id, skipped, counts = time.time(), 0, [], {"train": 0, "holdout": 0}
    with CorpusWriter(out_dir, num_classes=len(classes), class_names=classes, multi_label=False,
                      image_format=image_format, examples_per_shard=examples_per_shard,
                      name=os.path.basename(os.path.normpath(src_dir)),
                      description=f"converted from image folder {src_dir}") as writer:
        for label, name in enumerate(classes):
            folder = os.path.join(src_dir, name)
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
            holdout = _holdout_mask(len(files), holdout_fraction, rng)
            for fname, is_holdout in zip(files, holdout):
                path = os.path.join(folder, fname)
                try:
                    data = _file_bytes(path, image_format)
                except ValueError as err:
                    if on_bad_image == "raise":
                        raise
                    skipped.append(str(err))
                    log.warning("skipped: %s", err)
                    continue
                split = "holdout" if is_holdout else "train"
                writer.add(split, data, [label], next_id)
                counts[split] += 1
                next_id += 1
            log.info("converted class %d/%d (%s): %d images so far", label + 1, len(classes), name, next_id)
    if next_id == 0:
        raise ValueError(f"no images found under {src_dir} (extensions {IMAGE_EXTENSIONS})")
    return {"images": next_id, "skipped": skipped, "splits": counts, "seconds": time.time() - start}


def _split_name(tfds_split):
    name = re.sub(r"\W+", "_", tfds_split).strip("_")
    return name if name.isidentifier() else f"split_{name}"


def convert_tfds(name, out_dir, splits=("train",), data_dir=None, image_key="image", label_key="label",
                 image_format="jpeg", examples_per_shard=1024, max_examples=None):
    """Convert a locally available TFDS dataset (nothing is downloaded) to a corpus.

    `splits` are TFDS split specs (e.g. "train", "test", "train[:10%]"); each becomes a corpus split with the
    spec's identifier form (e.g. "train_10"). Labels: a ClassLabel feature (single-label) or a Sequence of
    ClassLabel (multi-label). Returns a stats dict.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # noqa: BLE001 - TFDS raises several types for unknown names
        raise ValueError(f"TFDS dataset {name!r} is not available: {err}") from err
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise ValueError(f"TFDS dataset {name!r} has no feature {key!r}; it has {sorted(features.keys())}")
    label_feature = features[label_key]
    multi_label = isinstance(label_feature, tfds.features.Sequence)
    class_feature = label_feature.feature if multi_label else label_feature
    if not isinstance(class_feature, tfds.features.ClassLabel):
        raise ValueError(f"feature {label_key!r} of {name!r} is not a ClassLabel (or a Sequence of them)")
    num_classes = class_feature.num_classes
    start, next_id, counts = time.time(), 0, {}
    with CorpusWriter(out_dir, num_classes=num_classes, class_names=class_feature.names, multi_label=multi_label,
                      image_format=image_format, examples_per_shard=examples_per_shard, name=name,
                      description=f"converted from TFDS {name}") as writer:
        for spec in splits:
            split = _split_name(spec)
            ds = tfds.load(name, split=spec, data_dir=data_dir, download=False, shuffle_files=False)
            if max_examples:
                ds = ds.take(max_examples)
            for ex in tfds.as_numpy(ds):
                labels = np.atleast_1d(ex[label_key]).tolist()
                writer.add(split, _encode(ex[image_key], image_format), labels, next_id)
                counts[split] = counts.get(split, 0) + 1
                next_id += 1
            log.info("converted TFDS %s split %s: %d examples", name, spec, counts.get(split, 0))
    return {"images": next_id, "splits": counts, "seconds": time.time() - start}
