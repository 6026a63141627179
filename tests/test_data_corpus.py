"""Corpus format: writer output readable by plain TFRecordDataset, index = framing scan, metadata, verify."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet.data import corpus, records, verify
from keras_nfnet.data.inspect_corpus import main as inspect_main
from keras_nfnet.data.synthetic import make_synthetic_corpus


def _write(tmp_path, n=25, per_shard=10, multi_label=True):
    rng = np.random.default_rng(0)
    d = str(tmp_path / "c")
    expected = []
    with corpus.CorpusWriter(d, num_classes=7, multi_label=multi_label, image_format="png",
                             examples_per_shard=per_shard) as w:
        for i in range(n):
            img = rng.integers(0, 256, (6 + i % 3, 5, 3)).astype(np.uint8)
            labels = sorted({int(v) for v in rng.integers(0, 7, 1 + (i % 2 if multi_label else 0))})
            split = "train" if i < n - 5 else "holdout"
            data = tf.io.encode_png(img).numpy()
            w.add(split, data, labels, 1000 + i)
            expected.append((split, data, labels, 1000 + i))
    return d, expected


def test_writer_output_reads_with_plain_tfrecorddataset(tmp_path):
    d, expected = _write(tmp_path)
    info = corpus.load_metadata(d)
    assert info.split_sizes == {"train": 20, "holdout": 5}
    assert [s["num_examples"] for s in info.split("train").shards] == [10, 10]
    got = []
    for split in ("train", "holdout"):
        files = info.split(split).shard_paths(d)
        for raw in tf.data.TFRecordDataset(files):  # no project code on the read path
            ex = tf.io.parse_single_example(raw, corpus.feature_spec())
            got.append((split, ex["image/encoded"].numpy(), list(ex["image/class/label"].values.numpy()),
                        int(ex["image/id"])))
    assert got == expected


def test_index_equals_independent_scan_of_tfrecord_framing(tmp_path):
    d, _ = _write(tmp_path)
    for path in corpus.load_metadata(d).split("train").shard_paths(d):
        index = records.read_index(path)
        # Independent walk of the documented framing: u64 length | u32 crc | payload | u32 crc.
        raw = open(path, "rb").read()
        pos, pairs = 0, []
        while pos < len(raw):
            length = int.from_bytes(raw[pos:pos + 8], "little")
            pairs.append((pos, length))
            pos += 16 + length
        np.testing.assert_array_equal(index, np.array(pairs))
        # and our random-access read returns exactly what TFRecordDataset yields, in order
        reader = records.RecordReader([path])
        plain = [r.numpy() for r in tf.data.TFRecordDataset(path)]
        assert [reader.read(i) for i in range(len(plain))] == plain


def test_reader_over_many_shards_keeps_few_files_open_and_maps_its_indexes(tmp_path):
    d, _ = _write(tmp_path)
    paths = corpus.load_metadata(d).split("train").shard_paths(d)
    assert len(paths) > 1
    plain = [r.numpy() for r in tf.data.TFRecordDataset(paths)]
    reader = records.RecordReader(paths, max_open_files=1)
    assert all(isinstance(ix, np.memmap) for ix in reader.indexes)  # not read into memory
    order = np.random.default_rng(0).permutation(len(plain))  # jump between shards
    payloads, errors = reader.read_many(order)
    assert not errors and payloads == [plain[i] for i in order]
    assert len(reader._fds) == 1


def test_metadata_label_frequencies_and_classes(tmp_path):
    d, expected = _write(tmp_path)
    info = corpus.load_metadata(d)
    freq = np.zeros(7, int)
    for split, _, labels, _ in expected:
        if split == "train":
            freq[labels] += 1
    assert list(info.split("train").label_frequencies) == freq.tolist()
    assert info.num_classes == 7 and info.multi_label and len(info.class_names) == 7
    meta = json.load(open(os.path.join(d, "metadata.json")))
    assert meta["schema_version"] == corpus.SCHEMA_VERSION
    assert all(len(s["sha256"]) == 64 for s in meta["splits"]["train"]["shards"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(labels=[7], example_id=1), "outside"),
    (dict(labels=[-1], example_id=1), "outside"),
    (dict(labels=[], example_id=1), "at least one label"),
    (dict(labels=[1], example_id=0), "already written"),
])
def test_writer_rejects_bad_examples(tmp_path, kwargs, match):
    with corpus.CorpusWriter(str(tmp_path / "c"), num_classes=7) as w:
        w.add("train", b"x", [1], 0)
        with pytest.raises(ValueError, match=match):
            w.add("train", b"x", **kwargs)


def test_writer_rejects_bad_configuration(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        corpus.CorpusWriter(str(tmp_path / "a"), 3, image_format="gif")
    with pytest.raises(ValueError, match="class_names"):
        corpus.CorpusWriter(str(tmp_path / "b"), 3, class_names=["a"])
    with corpus.CorpusWriter(str(tmp_path / "c"), 3, multi_label=False) as w:
        with pytest.raises(ValueError, match="single-label"):
            w.add("train", b"x", [0, 1], 0)
        w.add("train", b"x", [0], 0)
    with pytest.raises(ValueError, match="already holds a corpus"):
        corpus.CorpusWriter(str(tmp_path / "c"), 3)
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        corpus.load_metadata(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus.load_metadata(str(tmp_path / "nowhere"))


def test_verify_passes_then_detects_tampering(tmp_path, capsys):
    d = str(tmp_path / "s")
    make_synthetic_corpus(d, num_images=40, num_classes=5, image_size=16, examples_per_shard=16)
    assert verify.verify(d, deep=True) == []
    assert inspect_main([d]) == 0
    out = capsys.readouterr().out
    assert "split train: 40 examples in 3 shards" in out and "verified: OK" in out
    shard = os.path.join(d, "train-00001.tfrecord")
    raw = bytearray(open(shard, "rb").read())
    raw[40] ^= 0xFF
    open(shard, "wb").write(bytes(raw))
    problems = verify.verify(d)
    assert any("split train shard train-00001.tfrecord: shard sha256 does not match" in p for p in problems)
    assert any("train-00001.tfrecord" in p and "record 0" in p and "checksum" in p for p in problems)
    assert inspect_main([d]) == 1


def test_synthetic_corpus_is_deterministic_and_long_tailed(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_synthetic_corpus(a, num_images=300, num_classes=50, image_size=16, seed=3)
    make_synthetic_corpus(b, num_images=300, num_classes=50, image_size=16, seed=3)
    ia, ib = corpus.load_metadata(a), corpus.load_metadata(b)
    assert [s["sha256"] for s in ia.split("train").shards] == [s["sha256"] for s in ib.split("train").shards]
    assert ia.split_sizes == {"train": 300, "holdout": 15}
    freq = np.sort(np.asarray(ia.split("train").label_frequencies))[::-1]
    assert freq[:5].sum() > 0.3 * freq.sum()  # a few head classes carry a large share: long tail
    assert (freq > 0).sum() > 25  # but the tail is populated
    assert sum(ia.split("train").label_frequencies) > 300  # multi-label: more labels than images


def test_id_tables_list_each_records_id_and_older_corpora_still_open(tmp_path):
    d, expected = _write(tmp_path)
    info = corpus.load_metadata(d)
    for shard, path in zip(info.split("train").shards, info.split("train").shard_paths(d)):
        ids = [int(ex["image/id"]) for ex in (tf.io.parse_single_example(r, corpus.feature_spec())
                                              for r in tf.data.TFRecordDataset(path))]  # independent read
        np.testing.assert_array_equal(records.read_ids(path), ids)
        assert (shard["first_id"], shard["last_id"]) == (ids[0], ids[-1])
        assert shard["ids_sha256"] == corpus.sha256_file(records.ids_path(path))
    # A corpus written before id tables (no .ids files, no id entries in the metadata) opens and verifies; reads
    # then have no id to compare with.
    meta_path = os.path.join(d, "metadata.json")
    meta = json.load(open(meta_path))
    for split in meta["splits"].values():
        for shard in split["shards"]:
            for key in ("ids_sha256", "first_id", "last_id"):
                shard.pop(key)
            os.remove(records.ids_path(os.path.join(d, shard["file"])))
    json.dump(meta, open(meta_path, "w"))
    reader = verify.open_split(corpus.load_metadata(d), "train")
    assert not reader.has_ids and reader.expected_ids([0]) is None
    assert verify.verify(d, deep=True) == []
    verify.verify_checksums(corpus.load_metadata(d), ["train", "holdout"])


def test_open_checks_and_checksums_name_what_is_wrong(tmp_path):
    d, _ = _write(tmp_path)
    info = corpus.load_metadata(d)
    assert verify.open_split(info, "train").num_records == 20
    assert verify.verify_checksums(info, ["train"]) > 0
    path = os.path.join(d, "train-00000.tfrecord")
    index = np.array(records.read_index(path))
    index[[2, 3]] = index[[3, 2]]  # two entries swapped: same count, same end, wrong order
    records.write_index(path, index)
    with pytest.raises(records.CorruptRecordError, match=r"split train shard train-00000.tfrecord: index entry 2 "):
        verify.open_split(info, "train")
    with pytest.raises(records.CorruptRecordError, match=r"split train shard train-00000.tfrecord: index sha256"):
        verify.verify_checksums(info, ["train"])
