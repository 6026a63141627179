"""Corpus inspection and verification: summary, checksums, index consistency, optional deep record checks."""
import os

import numpy as np

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


def verify(corpus_dir, deep=False, progress=None):
    """Check every shard against the metadata and its index; returns a list of problems (empty = valid).

    Always: shard and index files exist, SHA-256 checksums match the metadata, the index equals a fresh scan of
    the shard's framing (with CRCs), record counts match. With deep=True also parse every record and check the
    label range, id uniqueness, label frequencies and that every image decodes.
    """
    info = corpus_lib.load_metadata(corpus_dir)
    problems = []
    ids = set()
    decode = None
    if deep:
        import tensorflow as tf

        decode = tf.function(lambda b: tf.shape(tf.io.decode_image(b, channels=3, expand_animations=False)),
                             input_signature=[tf.TensorSpec([], tf.string)])
    for name, split in sorted(info.splits.items()):
        count = 0
        freq = np.zeros(info.num_classes, np.int64)
        for shard in split.shards:
            path = os.path.join(corpus_dir, shard["file"])
            label = f"split {name} shard {shard['file']}"
            if progress:
                progress(f"verifying {label}")
            if not os.path.exists(path):
                problems.append(f"{label}: file missing")
                continue
            if corpus_lib.sha256_file(path) != shard["sha256"]:
                problems.append(f"{label}: sha256 does not match the metadata")
            index_file = records.index_path(path)
            if not os.path.exists(index_file):
                problems.append(f"{label}: index file missing")
                continue
            if corpus_lib.sha256_file(index_file) != shard["index_sha256"]:
                problems.append(f"{label}: index sha256 does not match the metadata")
            try:
                scanned = records.scan_shard(path)
            except records.CorruptRecordError as err:
                problems.append(f"{label}: {err}")
                continue
            index = records.read_index(path)
            if index.shape != scanned.shape or not np.array_equal(index, scanned):
                problems.append(f"{label}: index does not match the shard ({len(index)} entries, "
                                f"{len(scanned)} records found)")
            if len(scanned) != shard["num_examples"]:
                problems.append(f"{label}: {len(scanned)} records, metadata says {shard['num_examples']}")
            count += len(scanned)
            if deep:
                reader = records.RecordReader([path], [scanned])
                for r in range(len(scanned)):
                    where = f"{label} record {r}"
                    try:
                        ex = corpus_lib.decode_example(reader.read(r))
                    except Exception as err:  # noqa: BLE001 - report any parse failure with its location
                        problems.append(f"{where}: cannot parse ({err})")
                        continue
                    bad = [v for v in ex["labels"] if not 0 <= v < info.num_classes]
                    if bad or not ex["labels"]:
                        problems.append(f"{where}: labels {ex['labels']} outside [0, {info.num_classes})")
                    else:
                        freq[sorted(set(ex["labels"]))] += 1
                    if ex["id"] in ids:
                        problems.append(f"{where}: duplicate id {ex['id']}")
                    ids.add(ex["id"])
                    try:
                        decode(tf.constant(ex["image"]))
                    except Exception:  # noqa: BLE001
                        problems.append(f"{where}: image does not decode")
                reader.close()
        if count != split.num_examples:
            problems.append(f"split {name}: {count} records, metadata says {split.num_examples}")
        if deep and not np.array_equal(freq, np.asarray(split.label_frequencies)):
            problems.append(f"split {name}: label frequencies differ from the metadata")
    return problems
