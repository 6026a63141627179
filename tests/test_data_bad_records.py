"""Bad data through the library: each case gives an error naming the split, shard and record, or, under the
opt-in skip policy, a skip with weight 0 counted per reason (never silent loss). tests/test_bad_data_app.py runs
every kind through the pretraining app."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet.data import corpus, pipeline, records
from keras_nfnet.data.pipeline import BadRecordReport, eval_dataset, train_dataset

N, SIZE = 20, 16


def _png(i):
    return tf.io.encode_png(np.full((8, 8, 3), i * 10, np.uint8)).numpy()


def _make(tmp_path, bad_images=()):
    """20 single-label PNG examples (ids 0..19, label i % 5) in two shards of 10."""
    d = str(tmp_path / "c")
    with corpus.CorpusWriter(d, num_classes=5, multi_label=False, image_format="png", examples_per_shard=10) as w:
        for i in range(N):
            data = bad_images[i] if i in dict(bad_images) else _png(i)
            w.add("train", data, [i % 5], i)
    return d


def _shard(d, k):
    return os.path.join(d, f"train-{k:05d}.tfrecord")


def _corrupt_payload(d, shard, record, byte=30):
    path = _shard(d, shard)
    offset = int(records.read_index(path)[record, 0])
    raw = bytearray(open(path, "rb").read())
    raw[offset + records.HEADER_BYTES + byte] ^= 0x5A
    open(path, "wb").write(bytes(raw))


def _epoch(d, **kw):
    return next(iter(train_dataset(d, "train", N, SIZE, seed=0, **kw)))


def test_corrupt_record_names_shard_and_record(tmp_path):
    d = _make(tmp_path)
    _corrupt_payload(d, 1, 3)
    with pytest.raises(tf.errors.OpError, match=r"shard train-00001.tfrecord record 3: payload checksum mismatch"):
        _epoch(d)


def test_undecodable_and_truncated_images_name_shard_and_record(tmp_path):
    truncated_png = _png(4)[:-20]
    d = _make(tmp_path, bad_images={4: b"this is not an image", 13: truncated_png})
    with pytest.raises(tf.errors.OpError, match=r"split train shard train-0000[01].tfrecord record [43]: "
                                                r"image/encoded is (not a JPEG or PNG|a truncated JPEG or PNG)"):
        _epoch(d)
    report = BadRecordReport()
    x, y, w = _epoch(d, on_bad_record="skip", bad_record_report=report)
    # Rows are reported as their batches are produced, and prefetching may already have produced the next epoch's.
    assert report.by_record == {
        "split train shard train-00000.tfrecord record 4: image/encoded is not a JPEG or PNG (it starts with "
        "b'this is ')": "undecodable_image",
        "split train shard train-00001.tfrecord record 3: image/encoded is a truncated PNG (no IEND chunk)":
        "undecodable_image"}
    assert report.counts() == {"undecodable_image": 2}


def test_truncated_shard_fails_before_reading(tmp_path):
    d = _make(tmp_path)
    path = _shard(d, 0)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 7)
    with pytest.raises(ValueError, match=r"shard train-00000.tfrecord is truncated"):
        train_dataset(d, "train", 4, SIZE, seed=0)
    # the framing scan (used by verify) names the record that is cut
    with pytest.raises(records.CorruptRecordError, match=r"train-00000.tfrecord record 9: truncated"):
        records.scan_shard(path)


def test_index_that_does_not_match_its_shard(tmp_path):
    d = _make(tmp_path)
    # (a) an index belonging to another file: caught when the pipeline is built (count against the metadata)
    other = np.concatenate([records.read_index(_shard(d, 1)), [[10_000, 5]]])
    records.write_index(_shard(d, 0), other)
    with pytest.raises(ValueError, match=r"split train shard train-00000.tfrecord: its index lists 11 records, "
                                         r"the metadata says 10"):
        train_dataset(d, "train", 4, SIZE, seed=0)
    # (b) a stale entry inside an otherwise plausible index: caught when the pipeline is built (contiguity)
    d2 = _make(tmp_path / "b")
    index = records.read_index(_shard(d2, 1))
    index[6, 1] += 3
    records.write_index(_shard(d2, 1), index)
    with pytest.raises(ValueError, match=r"split train shard train-00001.tfrecord: index entry 7 .* does not "
                                         r"follow the previous record"):
        train_dataset(d2, "train", 4, SIZE, seed=0)
    # (c) and when read anyway, the record's stored length disagrees with the index
    path = _shard(_make(tmp_path / "c"), 1)
    index = np.array(records.read_index(path))
    index[6, 1] += 3
    reader = records.RecordReader([path], [index], split="train")
    with pytest.raises(records.CorruptRecordError, match=r"split train shard train-00001.tfrecord record 6: index "
                                                         r"does not match shard"):
        reader.read(6)


def test_label_outside_class_range(tmp_path):
    d = _make(tmp_path)
    meta_path = os.path.join(d, corpus.METADATA_FILE)
    meta = json.load(open(meta_path))
    meta["num_classes"], meta["class_names"] = 4, meta["class_names"][:4]  # label 4 is now out of range
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(tf.errors.OpError, match=r"shard train-0000[01].tfrecord record [49]: label\(s\) 4 outside "
                                                r"\[0, 4\)"):
        _epoch(d)


def test_skip_policy_counts_reports_and_zero_weights_every_bad_row(tmp_path, caplog):
    d = _make(tmp_path, bad_images={7: b"garbage"})
    _corrupt_payload(d, 1, 2)  # id 12
    report = BadRecordReport()
    x, y, info = next(iter(train_dataset(d, "train", N, SIZE, seed=0, on_bad_record="skip",
                                         bad_record_report=report, with_info=True)))
    weights = info["weight"].numpy()
    assert weights.sum() == N - 2 and x.shape[0] == N  # static batch; nothing dropped silently
    good_ids = sorted(info["id"].numpy()[weights == 1].tolist())
    assert good_ids == [i for i in range(N) if i not in (7, 12)]
    assert {s.split(":")[0] for s in report.skipped} == {"split train shard train-00001.tfrecord record 2",
                                                          "split train shard train-00000.tfrecord record 7"}
    assert any("train-00001.tfrecord record 2" in s and "checksum" in s for s in report.skipped)
    assert report.counts() == {"crc": 1, "undecodable_image": 1}
    assert np.all(y.numpy()[weights == 0] == 0)
    assert "skipped bad record" in caplog.text
    # in skip mode training elements carry the weight for model.fit
    x, y, w = _epoch(d, on_bad_record="skip")
    assert w.shape == (N,) and float(tf.reduce_sum(w)) == N - 2
    # and eval counts the bad rows out as well
    report = BadRecordReport()
    total = sum(float(tf.reduce_sum(w)) for _, _, w in eval_dataset(d, "train", 8, SIZE, on_bad_record="skip",
                                                                    bad_record_report=report))
    assert total == N - 2 and report.count == 2


def _png_with_corrupt_body(i):
    """A PNG whose magic number and IEND chunk are intact (so the cheap marker check passes) but whose image data
    is damaged, so TensorFlow's decoder rejects it."""
    data = bytearray(_png(i))
    start = data.index(b"IDAT") + 4
    data[start:start + 12] = b"\xff" * 12
    return bytes(data)


def test_image_the_decoder_rejects_is_named_after_the_failure(tmp_path):
    d = _make(tmp_path, bad_images={13: _png_with_corrupt_body(13)})
    with pytest.raises(tf.errors.InvalidArgumentError) as raw:  # anonymous inside the tf.data map
        _epoch(d)
    assert "record" not in raw.value.message
    suspects = lambda: [("train", pipeline.train_step_records(d, "train", N, 0, first_step=0))]
    named = r"bad record: split train shard train-00001.tfrecord record 3: TensorFlow's decoder rejects the image"
    with pytest.raises(records.CorruptRecordError, match=named):
        with pipeline.naming_bad_records(d, suspects):
            _epoch(d)
    # The whole-split search (used for evaluation) finds it too, and nothing else is reported.
    assert [(code, s.split(":")[0]) for code, s in pipeline.find_bad_records(d, "train")] == [
        ("undecodable_image", "split train shard train-00001.tfrecord record 3")]
    with pytest.raises(records.CorruptRecordError, match="train-00001.tfrecord record 3"):
        with pipeline.naming_bad_records(d, lambda: [("train", None)]):
            list(eval_dataset(d, "train", 8, SIZE))
    # Errors that are not about records pass through unchanged.
    with pytest.raises(tf.errors.InvalidArgumentError, match="unrelated"):
        with pipeline.naming_bad_records(d, suspects):
            tf.debugging.assert_equal(1, 2, message="unrelated")


def test_skip_policy_skips_an_image_the_decoder_rejects_and_keeps_every_other_row(tmp_path):
    clean = _make(tmp_path / "clean")
    d = _make(tmp_path / "bad", bad_images={13: _png_with_corrupt_body(13)})
    report = BadRecordReport()
    x, y, w = _epoch(d, on_bad_record="skip", bad_record_report=report)
    assert set(report.skipped) == {"split train shard train-00001.tfrecord record 3: TensorFlow's decoder rejects "
                                   "the image"}
    x0, y0, w0 = _epoch(clean, on_bad_record="skip")
    w, w0 = w.numpy(), w0.numpy()
    assert w0.all() and (w == 0).sum() == 1
    keep = w > 0
    np.testing.assert_array_equal(x.numpy()[keep], x0.numpy()[keep])  # the other rows: same pixels and labels
    np.testing.assert_array_equal(y.numpy()[keep], y0.numpy()[keep])
    assert not y.numpy()[~keep].any()
    # With MixUp/CutMix and RandAugment after it, and in evaluation (which also pads the last batch).
    report = BadRecordReport()
    _epoch(d, on_bad_record="skip", bad_record_report=report, mixup_cutmix=True, randaugment_layers=2)
    assert report.count >= 1 and report.counts() == {"undecodable_image": 1}
    report = BadRecordReport()
    weights = [b[2].numpy() for b in eval_dataset(d, "train", 8, SIZE, on_bad_record="skip",
                                                    bad_record_report=report)]
    assert report.count == 1 and sum(v.sum() for v in weights) == N - 1 and sum(len(v) for v in weights) == 24
