"""The corpus format: tf.train.Example schema, metadata file, and the writer.

A corpus is a directory:

    metadata.json                     schema version, classes, splits, shards, checksums, label frequencies
    <split>-<NNNNN>.tfrecord          shards of tf.train.Example records (plain TFRecord: any tool can read them)
    <split>-<NNNNN>.tfrecord.index    per-shard record-offset index (see records.py)
    <split>-<NNNNN>.tfrecord.ids      per-shard id table: the image/id of each record (see records.py)

Each Example holds `image/encoded` (JPEG/PNG bytes), `image/format`, `image/class/label` (one or more int64 class
numbers) and `image/id` (an int64 that is unique within the corpus and stable across rewrites).
"""
import dataclasses
import hashlib
import json
import os
import tempfile

import numpy as np

from keras_nfnet import storage
from keras_nfnet.data import records

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
IMAGE_KEY = "image/encoded"
FORMAT_KEY = "image/format"
LABEL_KEY = "image/class/label"
ID_KEY = "image/id"
IMAGE_FORMATS = ("jpeg", "png")
MIXED_FORMATS = "mixed"  # metadata's image_format when records differ (each record names its own format)


def feature_spec():
    """`tf.io.parse_example` spec of one record."""
    import tensorflow as tf

    return {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        FORMAT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LABEL_KEY: tf.io.VarLenFeature(tf.int64),
        ID_KEY: tf.io.FixedLenFeature([], tf.int64),
    }


def encode_example(image_bytes, labels, example_id, image_format):
    """Serialized tf.train.Example for one image."""
    import tensorflow as tf

    feature = {
        IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(image_bytes)])),
        FORMAT_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_format.encode()])),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in labels])),
        ID_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(example_id)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def decode_example(serialized):
    """Python-side parse of one record -> dict(image, format, labels, id): for tools and tests. ValueError (with
    the reason of `check_example`) for a record that is not a well-formed Example of this schema."""
    import tensorflow as tf

    problem = check_example(serialized)
    if problem is not None:
        raise ValueError(problem[1])
    f = tf.train.Example.FromString(serialized).features.feature
    return {
        "image": f[IMAGE_KEY].bytes_list.value[0],
        "format": f[FORMAT_KEY].bytes_list.value[0].decode(errors="replace") if FORMAT_KEY in f else "",
        "labels": list(f[LABEL_KEY].int64_list.value),
        "id": f[ID_KEY].int64_list.value[0],
    }


_JPEG_MAGIC, _PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
_JPEG_END, _PNG_END = b"\xff\xd9", b"IEND\xaeB`\x82"


def image_problem(data):
    """Why encoded image bytes are not a complete JPEG or PNG (magic number and end marker), or None."""
    if not data:
        return "image/encoded is empty (0 bytes)"
    if data.startswith(_JPEG_MAGIC):
        return None if data.endswith(_JPEG_END) else "image/encoded is a truncated JPEG (no end marker)"
    if data.startswith(_PNG_MAGIC):
        return None if data.endswith(_PNG_END) else "image/encoded is a truncated PNG (no IEND chunk)"
    return f"image/encoded is not a JPEG or PNG (it starts with {bytes(data[:8])!r})"


def check_example(serialized, num_classes=None, expected_id=None):
    """(reason code, text) of the first thing wrong with a serialized record, or None when the pipeline can use
    it (the image's body is not decoded here). Codes are `records.REASONS`."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        f = tf.train.Example.FromString(serialized).features.feature
    except (DecodeError, ValueError, TypeError, RuntimeError) as err:
        return "not_example", f"not a tf.train.Example ({str(err).splitlines()[0] if str(err) else 'parse failed'})"
    kinds = {IMAGE_KEY: "bytes_list", LABEL_KEY: "int64_list", ID_KEY: "int64_list"}
    for key, kind in kinds.items():
        if key not in f:
            return "missing_feature", f"feature {key} is missing"
        if f[key].WhichOneof("kind") != kind:
            return "missing_feature", f"feature {key} is a {f[key].WhichOneof('kind')}, not a {kind}"
    if len(f[IMAGE_KEY].bytes_list.value) != 1 or len(f[ID_KEY].int64_list.value) != 1:
        return "missing_feature", f"features {IMAGE_KEY} and {ID_KEY} must hold exactly one value each"
    labels = list(f[LABEL_KEY].int64_list.value)
    if not labels:
        return "missing_feature", f"feature {LABEL_KEY} holds no label"
    if num_classes is not None and any(not 0 <= v < num_classes for v in labels):
        return "label_out_of_range", f"label(s) {','.join(map(str, labels))} outside [0, {num_classes})"
    example_id = f[ID_KEY].int64_list.value[0]
    if expected_id is not None and example_id != expected_id:
        return "id_mismatch", (f"image/id {example_id} is not the id {expected_id} its id table lists: the shard, "
                               "its index or its id table was swapped, copied or changed")
    problem = image_problem(f[IMAGE_KEY].bytes_list.value[0])
    return ("undecodable_image", problem) if problem else None


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    name: str
    num_examples: int
    shards: tuple  # of dicts: file, num_examples, sha256, index_sha256
    label_frequencies: tuple  # examples carrying each class

    def shard_paths(self, corpus_dir):
        return [storage.join(corpus_dir, s["file"]) for s in self.shards]


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
    """What a trainer needs to know about a corpus (read with `load_metadata`)."""

    directory: str
    num_classes: int
    class_names: tuple
    multi_label: bool
    image_format: str
    splits: dict  # name -> SplitInfo
    name: str = ""
    description: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def split_sizes(self):
        return {k: v.num_examples for k, v in self.splits.items()}

    def split(self, name):
        if name not in self.splits:
            raise ValueError(f"corpus {self.directory} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]


_REQUIRED = {"num_classes": int, "class_names": list, "multi_label": bool, "image_format": str, "splits": dict}
_SPLIT_KEYS = ("num_examples", "shards", "label_frequencies")
_SHARD_KEYS = ("file", "num_examples", "sha256", "index_sha256")


def load_metadata(corpus_dir):
    """Read `metadata.json` of a corpus -> CorpusInfo (FileNotFoundError / ValueError naming the file and what is
    wrong with it: not JSON, a missing key, a value of the wrong kind)."""
    path = storage.join(corpus_dir, METADATA_FILE)
    if not storage.isdir(corpus_dir):
        raise FileNotFoundError(f"corpus directory {corpus_dir} does not exist")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} is missing: {corpus_dir} is not a corpus (or it was not closed)")
    try:
        meta = json.loads(storage.read_bytes(path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rewrite it or rebuild the corpus") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {version!r} is not supported (this reader knows {SCHEMA_VERSION})")
    for key, kind in _REQUIRED.items():
        if key not in meta:
            raise ValueError(f"{path} has no {key!r} entry: the metadata is incomplete")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise ValueError(f"{path}: {key!r} must be a JSON {kind.__name__}, got {meta[key]!r:.80}")
    splits = {}
    for name, s in meta["splits"].items():
        missing = [k for k in _SPLIT_KEYS if not isinstance(s, dict) or k not in s]
        if missing:
            raise ValueError(f"{path}: split {name!r} has no {missing[0]!r} entry: the metadata is incomplete")
        for i, shard in enumerate(s["shards"]):
            missing = [k for k in _SHARD_KEYS if not isinstance(shard, dict) or k not in shard]
            if missing:
                raise ValueError(f"{path}: shard {i} of split {name!r} has no {missing[0]!r} entry: the metadata "
                                 "is incomplete")
        try:
            splits[name] = SplitInfo(name, int(s["num_examples"]), tuple(s["shards"]),
                                     tuple(int(v) for v in s["label_frequencies"]))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: split {name!r} has a malformed entry ({err})") from None
    if len(meta["class_names"]) != meta["num_classes"]:
        raise ValueError(f"{path}: {len(meta['class_names'])} class_names for num_classes={meta['num_classes']}")
    return CorpusInfo(
        directory=corpus_dir,
        num_classes=int(meta["num_classes"]),
        class_names=tuple(meta["class_names"]),
        multi_label=bool(meta["multi_label"]),
        image_format=meta["image_format"],
        splits=splits,
        name=meta.get("name", ""),
        description=meta.get("description", ""),
        schema_version=version,
    )


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with storage.open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class _ShardWriter:
    def __init__(self, path):
        self.path = path
        # A remote object appears only when its upload completes, so it is written in place.
        self.tmp = path if storage.is_remote(path) else path + ".tmp"
        self.file = storage.open(self.tmp, "wb")
        self.hash = hashlib.sha256()
        self.offset = 0
        self.index = []
        self.ids = []

    def write(self, payload, example_id):
        frame = records.frame_record(payload)
        self.file.write(frame)
        self.hash.update(frame)
        self.index.append((self.offset, len(payload)))
        self.ids.append(int(example_id))
        self.offset += len(frame)

    def close(self):
        self.file.close()
        if self.tmp != self.path:
            os.replace(self.tmp, self.path)
        index_file = records.write_index(self.path, np.asarray(self.index, dtype=np.int64).reshape(-1, 2))
        ids_file = records.write_ids(self.path, self.ids)
        return {
            "file": storage.basename(self.path),
            "num_examples": len(self.index),
            "sha256": self.hash.hexdigest(),
            "index_sha256": sha256_file(index_file),
            "ids_sha256": sha256_file(ids_file),
            "first_id": self.ids[0],
            "last_id": self.ids[-1],
        }


class CorpusWriter:
    """Writes a corpus directory; use as a context manager so the metadata is written on exit.

        with CorpusWriter(out_dir, num_classes=10) as writer:
            writer.add("train", jpeg_bytes, labels=[3], example_id=0)

    The corpus is written aside, in a hidden folder next to `out_dir` (`.<name>.partial-*`), and published by
    renaming that folder to `out_dir` once it is complete (`out_dir` must not exist or be an empty folder). A
    conversion that fails (an exception inside the `with`) removes its folder, so it leaves nothing behind and
    the same command can simply run again; a process killed outright leaves only the hidden folder.

    A remote `out_dir` (a bucket has no rename) is written in place: shards, indexes and id tables first, and
    `metadata.json` last, so a reader never opens an incomplete corpus (without metadata it is not a corpus). A
    failed conversion removes what it wrote; one killed outright leaves objects without metadata, which must be
    removed before the same `out_dir` is used again.
    """

    def __init__(self, out_dir, num_classes, class_names=None, multi_label=False, image_format="jpeg",
                 examples_per_shard=1024, name="", description=""):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if not isinstance(examples_per_shard, int) or examples_per_shard < 1:
            raise ValueError(f"examples_per_shard must be a positive int, got {examples_per_shard!r}")
        if class_names is None:
            class_names = [f"class_{i}" for i in range(num_classes)]
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class_names for num_classes={num_classes}")
        if storage.exists(storage.join(out_dir, METADATA_FILE)):
            raise ValueError(f"{out_dir} already holds a corpus ({METADATA_FILE} exists); choose an empty directory")
        if storage.exists(out_dir) and (not storage.isdir(out_dir) or storage.listdir(out_dir)):
            raise ValueError(f"{out_dir} exists and is not an empty directory; choose a new or empty directory")
        self.out_dir = out_dir
        if storage.is_remote(out_dir):
            self._staging = out_dir
        else:
            parent = os.path.dirname(os.path.abspath(out_dir))
            os.makedirs(parent, exist_ok=True)
            self._staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.partial-",
                                             dir=parent)
        self.num_classes = num_classes
        self.class_names = class_names
        self.multi_label = bool(multi_label)
        self.image_format = image_format
        self.examples_per_shard = examples_per_shard
        self.name = name
        self.description = description
        self._open = {}  # split -> _ShardWriter
        self._shards = {}  # split -> list of shard dicts
        self._counts = {}
        self._freq = {}
        self._formats = set()
        self._ids = set()
        self._closed = False

    def add(self, split, image_bytes, labels, example_id, image_format=None):
        """Append one image with its label list and a corpus-unique integer id to `split`.

        `image_format` ("jpeg" or "png") is this record's encoding; default the writer's.
        """
        if self._closed:
            raise ValueError("CorpusWriter is closed")
        image_format = image_format or self.image_format
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if not split or not str(split).isidentifier():
            raise ValueError(f"split names must be identifiers like 'train' or 'holdout', got {split!r}")
        labels = [int(v) for v in np.atleast_1d(labels)]
        if not labels:
            raise ValueError(f"example {example_id}: at least one label is required")
        if not self.multi_label and len(labels) != 1:
            raise ValueError(f"example {example_id}: single-label corpus got {len(labels)} labels {labels}")
        bad = [v for v in labels if not 0 <= v < self.num_classes]
        if bad:
            raise ValueError(f"example {example_id}: labels {bad} outside [0, {self.num_classes})")
        example_id = int(example_id)
        if example_id in self._ids:
            raise ValueError(f"example id {example_id} was already written: ids must be unique in a corpus")
        self._ids.add(example_id)
        shard = self._open.get(split)
        if shard is None:
            number = len(self._shards.setdefault(split, []))
            shard = self._open[split] = _ShardWriter(storage.join(self._staging, f"{split}-{number:05d}.tfrecord"))
        shard.write(encode_example(image_bytes, sorted(set(labels)), example_id, image_format), example_id)
        self._formats.add(image_format)
        self._counts[split] = self._counts.get(split, 0) + 1
        freq = self._freq.setdefault(split, np.zeros(self.num_classes, np.int64))
        freq[sorted(set(labels))] += 1
        if len(shard.index) >= self.examples_per_shard:
            self._shards[split].append(shard.close())
            del self._open[split]

    def close(self):
        """Finish open shards, write `metadata.json` and publish the corpus at `out_dir`; returns the metadata's
        path. A corpus with no example is an error (ValueError) and publishes nothing."""
        if self._closed:
            return storage.join(self.out_dir, METADATA_FILE)
        if not self._counts:
            self.abort()
            raise ValueError(f"no example was written: nothing published at {self.out_dir}")
        for split, shard in self._open.items():
            self._shards[split].append(shard.close())
        self._open = {}
        meta = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "multi_label": self.multi_label,
            "image_format": self._formats.pop() if len(self._formats) == 1 else MIXED_FORMATS,
            "record_format": "tfrecord of tf.train.Example; index: <u8 pairs (offset, payload_length); "
                             "ids: <i8 image/id per record",
            "features": {"image": IMAGE_KEY, "format": FORMAT_KEY, "labels": LABEL_KEY, "id": ID_KEY},
            "splits": {
                split: {
                    "num_examples": self._counts[split],
                    "shards": self._shards[split],
                    "label_frequencies": self._freq[split].tolist(),
                }
                for split in sorted(self._shards)
            },
        }
        if storage.is_remote(self.out_dir):  # the metadata, written last, publishes the corpus
            storage.write_atomic(storage.join(self.out_dir, METADATA_FILE), json.dumps(meta, indent=1))
            self._closed = True
            return storage.join(self.out_dir, METADATA_FILE)
        with open(os.path.join(self._staging, METADATA_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        try:  # replaces an empty directory atomically; fails on a non-empty one
            os.rename(self._staging, self.out_dir)
        except OSError as err:
            self.abort()
            raise ValueError(f"cannot publish the corpus at {self.out_dir}: {err.strerror} (it must be a new or "
                             "empty directory)") from err
        self._closed = True
        return os.path.join(self.out_dir, METADATA_FILE)

    def abort(self):
        """Drop everything written so far (nothing is published)."""
        for shard in self._open.values():
            shard.file.close()
        self._open = {}
        storage.rmtree(self._staging)
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # a failed conversion leaves nothing behind
            self.abort()
