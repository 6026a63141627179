"""Converters into the corpus format: an image folder (class sub-folders, optionally inside split sub-folders)
and a TFDS dataset.

Images are stored as they are whenever the input pipeline can decode them: a JPEG stays the same JPEG and a PNG
the same PNG, byte for byte (`image_format="auto"`, the default). Other formats (GIF, BMP, WebP, TIFF, ...) are
re-encoded as PNG, which is lossless. `image_format="jpeg"` or `"png"` asks for one encoding throughout (files
already in it are still stored byte for byte). A conversion publishes its corpus atomically (see `CorpusWriter`):
one that fails leaves nothing behind.
"""
import io
import logging
import os
import re
import time

import numpy as np

from keras_nfnet.data.corpus import CorpusWriter

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
STORE_FORMATS = ("auto", "jpeg", "png")
_PIL_NAMES = {"JPEG": "jpeg", "PNG": "png"}
# PIL modes TensorFlow's JPEG / PNG decoders read as the same pixels (others, e.g. CMYK JPEG or 16-bit PNG, are
# converted to 8-bit RGB and stored as PNG).
_DECODABLE_MODES = {"jpeg": ("L", "RGB"), "png": ("L", "LA", "RGB", "RGBA", "P", "1")}


def _check_store_format(image_format):
    if image_format not in STORE_FORMATS:
        raise ValueError(f"image_format must be one of {STORE_FORMATS}, got {image_format!r}")


def _encode_pil(img, image_format):
    buf = io.BytesIO()
    if image_format == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=95)
    else:
        if img.mode not in _DECODABLE_MODES["png"]:
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        img.save(buf, format="PNG")
    return buf.getvalue()


def stored_bytes(data, image_format="auto", what="image"):
    """(bytes to store, "jpeg" | "png") for an encoded image; ValueError naming `what` if it cannot be decoded.

    "auto": JPEG and PNG bytes unchanged (up to bytes after the end marker), anything else as PNG; "jpeg" /
    "png": that encoding, the input unchanged when it already is in it.
    """
    from PIL import Image, UnidentifiedImageError

    _check_store_format(image_format)
    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = _PIL_NAMES.get(img.format)
            img.load()  # full decode: catches truncated files now, not at training time
            keep = kind is not None and img.mode in _DECODABLE_MODES[kind] and image_format in ("auto", kind)
            if keep:
                return _strip_trailing(data, kind), kind
            target = "png" if image_format == "auto" else image_format
            return _encode_pil(img, target), target
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{what} cannot be decoded: {err}") from err


def _strip_trailing(data, kind):
    """Drop bytes after the end marker (some cameras and editors append data): the pipeline's cheap integrity
    check expects a JPEG to end with its EOI marker and a PNG with its IEND chunk."""
    end = b"\xff\xd9" if kind == "jpeg" else b"IEND\xaeB`\x82"
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


def split_name(name):
    """A folder or TFDS split name as a corpus split name (an identifier): "train[:10%]" -> "train_10"."""
    name = re.sub(r"\W+", "_", name).strip("_")
    return name if name.isidentifier() else f"split_{name}"


def _subfolders(path):
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))


def _image_files(folder):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def folder_layout(src_dir):
    """{split: {class: folder}} for `src_dir`, and whether it has split sub-folders.

    Layouts: `src_dir/<split>/<class>/<images>` (every top-level folder holds class folders and no images) or
    `src_dir/<class>/<images>` (every top-level folder holds images). Anything else is a ValueError naming the
    folders that do not fit.
    """
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"image folder {src_dir} does not exist")
    top = _subfolders(src_dir)
    if not top:
        raise ValueError(f"{src_dir} has no sub-folders: expected {src_dir}/<class>/<images> or "
                         f"{src_dir}/<split>/<class>/<images>")
    holds_images = {d: bool(_image_files(os.path.join(src_dir, d))) for d in top}
    holds_folders = {d: bool(_subfolders(os.path.join(src_dir, d))) for d in top}
    if any(holds_images.values()):
        mixed = [d for d in top if holds_folders[d] and not holds_images[d]]
        if mixed:
            raise ValueError(f"{src_dir} mixes class folders with images and folders without images ({mixed[:5]}): "
                             f"expected {src_dir}/<class>/<images> or {src_dir}/<split>/<class>/<images>")
        return {None: {d: os.path.join(src_dir, d) for d in top}}, False
    if not all(holds_folders.values()):
        empty = [d for d in top if not holds_folders[d]]
        raise ValueError(f"{src_dir}: sub-folders {empty[:5]} hold neither images nor class folders")
    splits = {}
    for d in top:
        name = split_name(d)
        if name in splits:
            raise ValueError(f"{src_dir}: split folders {d!r} and another one both map to split name {name!r}")
        splits[name] = {c: os.path.join(src_dir, d, c) for c in _subfolders(os.path.join(src_dir, d))}
    return splits, True


def convert_image_folder(src_dir, out_dir, test_fraction=0.1, seed=0, image_format="auto",
                         examples_per_shard=1024, on_bad_image="raise"):
    """Convert an image folder to a single-label corpus; returns a stats dict (images, skipped, splits, seconds).

    - `src_dir/<split>/<class>/<images>` (e.g. `train/`, `test/`, `validation/`, any names): one corpus split per
      split folder, named after it, with one class list (the sorted union of the class folder names);
      `test_fraction` is not used.
    - `src_dir/<class>/<images>`: a stratified `test_fraction` of each class (chosen by `seed`) goes to split
      "test" (the fine-tuning job's default evaluation split), the rest to "train".

    Images are stored as `stored_bytes(..., image_format)` says (default: JPEG and PNG files byte for byte).
    Unreadable files raise ValueError naming the file, or with on_bad_image="skip" are skipped, counted and
    logged. The corpus appears at `out_dir` only when complete.
    """
    _check_store_format(image_format)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
    layout, has_splits = folder_layout(src_dir)
    classes = sorted({c for folders in layout.values() for c in folders})
    label_of = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    start, next_id, skipped, counts, formats = time.time(), 0, [], {}, {}
    with CorpusWriter(out_dir, num_classes=len(classes), class_names=classes, multi_label=False,
                      image_format="png" if image_format == "auto" else image_format,
                      examples_per_shard=examples_per_shard, name=os.path.basename(os.path.normpath(src_dir)),
                      description=f"converted from image folder {src_dir}") as writer:
        for split, folders in layout.items():
            for name, folder in sorted(folders.items()):
                files = _image_files(folder)
                to_test = _holdout_mask(len(files), 0.0 if has_splits else test_fraction, rng)
                for fname, is_test in zip(files, to_test):
                    path = os.path.join(folder, fname)
                    try:
                        with open(path, "rb") as f:
                            data = f.read()
                        data, kind = stored_bytes(data, image_format, what=f"image file {path}")
                    except (ValueError, OSError) as err:
                        if on_bad_image == "raise":
                            raise ValueError(str(err)) from err
                        skipped.append(str(err))
                        log.warning("skipped: %s", err)
                        continue
                    target = split or ("test" if is_test else "train")
                    writer.add(target, data, [label_of[name]], next_id, image_format=kind)
                    counts[target] = counts.get(target, 0) + 1
                    formats[kind] = formats.get(kind, 0) + 1
                    next_id += 1
                log.info("converted %sclass %s: %d images so far", f"split {split} " if split else "", name, next_id)
        if next_id == 0:  # inside the writer: it then publishes nothing
            raise ValueError(f"no images found under {src_dir} (extensions {IMAGE_EXTENSIONS})" +
                             (f"; {len(skipped)} files could not be decoded" if skipped else ""))
    return {"images": next_id, "skipped": skipped, "splits": counts, "formats": formats,
            "seconds": time.time() - start}


def _tfds_splits(splits):
    """["train", "test=train[90%:]", ...] -> [(corpus split, TFDS spec)]: `name=spec` names a split, a bare spec
    gets its identifier form ("train[:10%]" -> "train_10")."""
    out = []
    for item in splits:
        name, _, spec = item.partition("=") if "=" in item else (split_name(item), "", item)
        name = name.strip()
        if not name.isidentifier() or not spec.strip():
            raise ValueError(f"TFDS split {item!r}: expected a split spec such as 'train' or 'train[:90%]', or "
                             "name=spec such as 'test=train[90%:]'")
        out.append((name, spec.strip()))
    names = [name for name, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"TFDS splits {list(splits)} give repeated corpus split names {names}")
    return out


def convert_tfds(name, out_dir, splits=("train",), data_dir=None, image_key="image", label_key="label",
                 image_format="auto", examples_per_shard=1024, max_examples=None):
    """Convert a locally available TFDS dataset (nothing is downloaded) to a corpus.

    `splits` are TFDS split specs (e.g. "train", "test", "train[:10%]"), each becoming a corpus split with the
    spec's identifier form ("train", "test", "train_10"), or `name=spec` pairs to choose the name
    ("test=train[90%:]"). The images are read as TFDS stores them (no decode and re-encode) and stored as
    `stored_bytes(..., image_format)` says (default: JPEG and PNG unchanged). Labels: a ClassLabel feature
    (single-label) or a Sequence of ClassLabel (multi-label). Returns a stats dict. The corpus appears at `out_dir`
    only when every split is converted.
    """
    import tensorflow_datasets as tfds

    _check_store_format(image_format)
    pairs = _tfds_splits(splits)
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
    start, next_id, counts, formats = time.time(), 0, {}, {}
    with CorpusWriter(out_dir, num_classes=num_classes, class_names=class_feature.names, multi_label=multi_label,
                      image_format="png" if image_format == "auto" else image_format,
                      examples_per_shard=examples_per_shard, name=name,
                      description=f"converted from TFDS {name}") as writer:
        for split, spec in pairs:
            ds = tfds.load(name, split=spec, data_dir=data_dir, download=False, shuffle_files=False,
                           decoders={image_key: tfds.decode.SkipDecoding()})
            if max_examples:
                ds = ds.take(max_examples)
            for i, ex in enumerate(tfds.as_numpy(ds)):
                labels = np.atleast_1d(ex[label_key]).tolist()
                data, kind = stored_bytes(ex[image_key], image_format, what=f"TFDS {name} {spec} example {i}")
                writer.add(split, data, labels, next_id, image_format=kind)
                counts[split] = counts.get(split, 0) + 1
                formats[kind] = formats.get(kind, 0) + 1
                next_id += 1
            log.info("converted TFDS %s split %s -> %s: %d examples", name, spec, split, counts.get(split, 0))
        if next_id == 0:
            raise ValueError(f"TFDS dataset {name!r} splits {list(splits)} hold no examples")
    return {"images": next_id, "splits": counts, "formats": formats, "seconds": time.time() - start}
