"""A corpus written to and read from a bucket (GCS emulator over HTTP, gcsfs) and from TensorFlow's ram://
filesystem. The reference is the same corpus written to a local directory by the same producer: the remote
one must hold the same bytes and give bitwise the same training batches; damage is found as locally."""
import json
import os

import numpy as np
import pytest

from keras_nfnet import storage
from keras_nfnet.data import corpus as corpus_lib
from keras_nfnet.data import records
from keras_nfnet.data import verify
from keras_nfnet.data.pipeline import record_batches, train_dataset
from keras_nfnet.data.synthetic import make_synthetic_corpus

CORPUS = dict(num_images=24, num_holdout=4, num_classes=5, image_size=16, seed=3, examples_per_shard=10,
              progress_every=0)


@pytest.fixture(scope="module")
def local_corpus(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("corpus") / "local")
    make_synthetic_corpus(path, **CORPUS)
    return path


def _files(root):
    return {name: storage.read_bytes(storage.join(root, name)) for name in storage.listdir(root)}


def _batches(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


@pytest.mark.parametrize("where", ["gcs", "ram"])
def test_remote_corpus_equals_local(where, local_corpus, request):
    remote = storage.join(request.getfixturevalue("gcs_dir" if where == "gcs" else "ram_dir"), "corpus")
    make_synthetic_corpus(remote, **CORPUS)

    local_files, remote_files = _files(local_corpus), _files(remote)
    assert sorted(remote_files) == sorted(local_files)  # shards, indexes, id tables, metadata.json; no temporaries
    meta = json.loads(remote_files.pop(corpus_lib.METADATA_FILE))
    assert meta == json.loads(local_files.pop(corpus_lib.METADATA_FILE))
    assert remote_files == local_files

    info = corpus_lib.load_metadata(remote)
    assert verify.verify_checksums(info, ["train", "holdout"]) == sum(len(v) for v in local_files.values())
    assert verify.verify(remote) == []
    reader = verify.open_split(info, "train")
    assert reader.remote and reader.num_records == CORPUS["num_images"]

    # The records of 5 steps (the second epoch included), then decoded and augmented batches from step 3 on.
    expected = _batches(record_batches(local_corpus, "train", 8, seed=1), 5)
    got = _batches(record_batches(remote, "train", 8, seed=1), 5)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g["position"], e["position"])
        assert list(g["serialized"]) == list(e["serialized"])
    expected = list(train_dataset(local_corpus, "train", 4, 16, seed=2, start_step=3).take(2))
    got = list(train_dataset(remote, "train", 4, 16, seed=2, start_step=3).take(2))
    for (ei, el), (gi, gl) in zip(expected, got):
        np.testing.assert_array_equal(gi.numpy(), ei.numpy())
        np.testing.assert_array_equal(gl.numpy(), el.numpy())


def test_damaged_remote_corpus_is_reported(gcs_dir):
    remote = storage.join(gcs_dir, "corpus")
    make_synthetic_corpus(remote, **CORPUS)
    shard = storage.join(remote, "train-00001.tfrecord")
    data = bytearray(storage.read_bytes(shard))
    index = records.read_index(shard)
    offset, length = (int(v) for v in index[2])
    data[offset + records.HEADER_BYTES + length // 2] ^= 0xFF  # one byte inside record 2's payload
    storage.write_bytes(shard, bytes(data))

    info = corpus_lib.load_metadata(remote)
    with pytest.raises(records.CorruptRecordError, match="train-00001.tfrecord.*record 2.*checksum"):
        verify.verify_checksums(info, ["train"])
    reader = verify.open_split(info, "train")
    with pytest.raises(records.CorruptRecordError, match="shard train-00001.tfrecord record 2: payload checksum"):
        reader.read(12)
    storage.write_bytes(shard, bytes(data[:-5]))  # truncated: the index no longer matches the object
    with pytest.raises(records.CorruptRecordError, match="train-00001.tfrecord is truncated"):
        verify.open_split(info, "train")


def test_remote_writer_refuses_a_used_directory_and_cleans_up_a_failure(gcs_dir):
    storage.write_text(storage.join(gcs_dir, "used", "notes.txt"), "keep me")
    with pytest.raises(ValueError, match="not an empty directory"):
        corpus_lib.CorpusWriter(storage.join(gcs_dir, "used"), num_classes=2)
    assert storage.read_text(storage.join(gcs_dir, "used", "notes.txt")) == "keep me"

    out = storage.join(gcs_dir, "failed")
    with pytest.raises(RuntimeError):
        with corpus_lib.CorpusWriter(out, num_classes=2, examples_per_shard=1) as writer:
            writer.add("train", b"\xff\xd8\xff" + b"x" * 10 + b"\xff\xd9", [0], 0)
            writer.add("train", b"\xff\xd8\xff" + b"y" * 10 + b"\xff\xd9", [1], 1)
            assert storage.exists(storage.join(out, "train-00000.tfrecord"))  # written in place, no metadata yet
            with pytest.raises(FileNotFoundError, match="metadata.json is missing"):
                corpus_lib.load_metadata(out)
            raise RuntimeError("conversion failed")
    assert not storage.exists(out)
    assert os.environ["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
