"""Corpus inspection and verification: the checks made when a split is opened (cheap, every time), the checksum
verification made at a run's first open, and the full offline verification of `inspect_corpus`.

When what is checked (see docs/data.md, "Bad data"):
  every open      (`open_split`) files present, index and id-table sizes, index contiguous with the framing and
                  ending at the end of the shard, counts against the metadata, each shard's first and last id
                  against the metadata: reads the index (16 bytes per record), never a record
  first open      (`verify_checksums`, by the jobs when a work directory is new) SHA-256 of every shard, index and
                  id table of the splits the job reads, against the metadata: reads every byte once
  every read      (records.RecordReader, the pipeline) length vs index, payload CRC-32C, the record's id vs its id
                  table, the Example's features, labels and image markers
  inspect_corpus  all of the above plus a CRC scan of every record, id uniqueness, label frequencies, and (--deep)
                  every image decoded
"""
import numpy as np

from keras_nfnet import storage
from keras_nfnet.data import corpus as corpus_lib
from keras_nfnet.data import records


def summarize(corpus_dir, top=10):
    """A human-readable summary: splits, counts, shards, classes, head of the label histogram."""
    info = corpus_lib.load_metadata(corpus_dir)
    lines = [
        f"corpus {corpus_dir} ({info.name or 'unnamed'}): schema {info.schema_version}, {info.num_classes} classes, "
        f"{'multi' if info.multi_label else 'single'}-label, {info.image_format} images",
    ]
    for name, split in sorted(info.splits.items()):
        freq = np.asarray(split.label_frequencies)
        labels = int(freq.sum())
        lines.append(f"  split {name}: {split.num_examples} examples in {len(split.shards)} shards, "
                     f"{labels} labels ({labels / max(split.num_examples, 1):.2f} per example), "
                     f"{int((freq > 0).sum())} classes present")
        order = np.argsort(-freq, kind="stable")[:top]
        head = ", ".join(f"{info.class_names[c]}={int(freq[c])}" for c in order if freq[c] > 0)
        lines.append(f"    most frequent: {head}")
    return "\n".join(lines)


def _shard_label(split, shard):
    return records.place(split, shard["file"])


def open_split(info, split):
    """A RecordReader over `split` of the corpus described by `info` (a CorpusInfo), after the every-open checks.

    Raises CorruptRecordError (a ValueError) or FileNotFoundError naming the split and shard."""
    split_info = info.split(split)
    paths, indexes, ids = [], [], []
    for shard in split_info.shards:
        path = storage.join(info.directory, shard["file"])
        label = _shard_label(split, shard)
        for needed in (path, records.index_path(path)):
            if not storage.exists(needed):
                raise FileNotFoundError(f"{label}: {storage.basename(needed)} is missing from {info.directory}")
        index = records.read_index(path)
        if len(index) != int(shard["num_examples"]):
            raise records.CorruptRecordError(f"{label}: its index lists {len(index)} records, the metadata says "
                                             f"{shard['num_examples']}")
        records.check_index_against_file(path, index, split)
        table = records.read_ids(path)
        if table is None and "ids_sha256" in shard:
            raise FileNotFoundError(f"{label}: id table {storage.basename(records.ids_path(path))} is missing")
        if table is not None:
            if len(table) != len(index):
                raise records.CorruptRecordError(f"{label}: its id table lists {len(table)} ids, its index "
                                                 f"{len(index)} records")
            want = (shard.get("first_id"), shard.get("last_id"))
            if len(table) and want != (None, None) and (int(table[0]), int(table[-1])) != want:
                raise records.CorruptRecordError(
                    f"{label}: holds ids {int(table[0])}..{int(table[-1])}, the metadata lists {want[0]}..{want[1]}"
                    " for this shard: shards were swapped or copied over each other")
        paths.append(path)
        indexes.append(index)
        ids.append(table)
    reader = records.RecordReader(paths, indexes, ids=ids, split=split)
    if reader.num_records != split_info.num_examples:
        raise records.CorruptRecordError(f"split {split!r}: its shards hold {reader.num_records} records, the "
                                         f"metadata says {split_info.num_examples}")
    return reader


def verify_checksums(info, splits, progress=None):
    """Compare the SHA-256 of every shard, index and id table of `splits` with the metadata (reads every byte).

    A mismatch raises CorruptRecordError naming the split and file; for a shard whose bytes changed, the framing
    is scanned to name the first damaged record too. Returns the number of bytes hashed."""
    hashed = 0
    for split in splits:
        for shard in info.split(split).shards:
            path = storage.join(info.directory, shard["file"])
            label = _shard_label(split, shard)
            if progress:
                progress(f"verifying checksums of {label}")
            files = [(path, "sha256", "shard"), (records.index_path(path), "index_sha256", "index"),
                     (records.ids_path(path), "ids_sha256", "id table")]
            for file, key, what in files:
                if key not in shard:
                    continue  # a corpus written before id tables
                if not storage.exists(file):
                    raise FileNotFoundError(f"{label}: {what} file {storage.basename(file)} is missing")
                digest = corpus_lib.sha256_file(file)
                hashed += storage.size(file)
                if digest == shard[key]:
                    continue
                detail = ""
                if what == "shard":
                    try:
                        records.scan_shard(file, split=split)
                        detail = "; its framing and CRCs are intact, so the file was replaced or the metadata edited"
                    except records.CorruptRecordError as err:
                        detail = f"; {err}"
                raise records.CorruptRecordError(
                    f"{label}: {what} sha256 {digest[:12]}... does not match the metadata's {shard[key][:12]}...{detail}")
    return hashed


def verify(corpus_dir, deep=False, progress=None):
    """Check every shard against the metadata and its index; returns a list of problems (empty = valid).

    Always: shard and index files exist, SHA-256 checksums match the metadata, the index equals a fresh scan of
    the shard's framing (with CRCs), record counts match. With deep=True also parse every record and check the
    label range, id uniqueness, label frequencies and that every image decodes.
    """
    info = corpus_lib.load_metadata(corpus_dir)
    problems = []
    ids = set()  # with deep: every id seen, for the uniqueness check
    decode = None
    if deep:
        import tensorflow as tf

        decode = tf.function(lambda b: tf.shape(tf.io.decode_image(b, channels=3, expand_animations=False)),
                             input_signature=[tf.TensorSpec([], tf.string)])
    for name, split in sorted(info.splits.items()):
        count = 0
        freq = np.zeros(info.num_classes, np.int64)
        for shard in split.shards:
            path = storage.join(corpus_dir, shard["file"])
            label = f"split {name} shard {shard['file']}"
            if progress:
                progress(f"verifying {label}")
            if not storage.exists(path):
                problems.append(f"{label}: file missing")
                continue
            for file, key, what in ((path, "sha256", "shard"), (records.index_path(path), "index_sha256", "index"),
                                    (records.ids_path(path), "ids_sha256", "id table")):
                if key in shard and not storage.exists(file):
                    problems.append(f"{label}: {what} file missing")
                elif key in shard and corpus_lib.sha256_file(file) != shard[key]:
                    problems.append(f"{label}: {what} sha256 does not match the metadata")
            try:
                scanned = records.scan_shard(path, split=name)
            except records.CorruptRecordError as err:
                problems.append(str(err))
                continue
            try:
                index = records.read_index(path)
                table = records.read_ids(path)
            except (records.CorruptRecordError, FileNotFoundError) as err:
                problems.append(f"{label}: {err}")
                index, table = None, None
            if index is not None and (index.shape != scanned.shape or not np.array_equal(index, scanned)):
                problems.append(f"{label}: index does not match the shard ({len(index)} entries, "
                                f"{len(scanned)} records found)")
            if table is not None and len(table) != len(scanned):
                problems.append(f"{label}: id table lists {len(table)} ids, the shard has {len(scanned)} records")
                table = None
            if table is not None and len(table) and (shard.get("first_id"), shard.get("last_id")) not in (
                    (None, None), (int(table[0]), int(table[-1]))):
                problems.append(f"{label}: id table holds ids {int(table[0])}..{int(table[-1])}, the metadata "
                                f"lists {shard.get('first_id')}..{shard.get('last_id')}")
            if len(scanned) != shard["num_examples"]:
                problems.append(f"{label}: {len(scanned)} records, metadata says {shard['num_examples']}")
            count += len(scanned)
            if deep:
                reader = records.RecordReader([path], [scanned], split=name)
                for r in range(len(scanned)):
                    where = f"{label} record {r}"
                    payload = reader.read(r)
                    expected = int(table[r]) if table is not None else None
                    problem = corpus_lib.check_example(payload, info.num_classes, expected)
                    if problem is not None:
                        problems.append(f"{where}: {problem[1]}")
                        continue
                    ex = corpus_lib.decode_example(payload)
                    freq[sorted(set(ex["labels"]))] += 1
                    if ex["id"] in ids:
                        problems.append(f"{where}: duplicate id {ex['id']}")
                    ids.add(ex["id"])
                    try:
                        decode(tf.constant(ex["image"]))
                    except Exception as err:  # noqa: BLE001
                        problems.append(f"{where}: TensorFlow's decoder rejects the image "
                                        f"({str(getattr(err, 'message', err)).splitlines()[0]})")
                reader.close()
        if count != split.num_examples:
            problems.append(f"split {name}: {count} records, metadata says {split.num_examples}")
        if deep and not np.array_equal(freq, np.asarray(split.label_frequencies)):
            problems.append(f"split {name}: label frequencies differ from the metadata")
    return problems
