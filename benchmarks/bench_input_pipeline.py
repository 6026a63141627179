"""Input pipeline throughput: the exactly-once pipeline against a plain TFRecordDataset + shuffle pipeline.

Both read the same corpus in the same run; the table gives records/s and the ratio to the plain pipeline
(goal >= 0.9). Stages:
  read+parse       records fetched and parsed with tf.io.parse_example (no image decoding)
  decode+augment   + decode, Inception crop, flip, bicubic resize, normalise, batch
  +RandAugment     + RandAugment(2, 10) (stateless here; tf-models-official's stateful RandAugment in the
                   plain pipeline)
  +MixUp/CutMix    + MixUp/CutMix (stateless pairs here, tf-models-official's MixupAndCutmix in the plain one)
  ids:read+parse, ids:decode+augment
                   the cost of the per-record id check: the same corpus without id tables (the read path before
                   the check; the baseline) against with them (read, gather the expected ids, compare in the graph)
  remote:read+parse, remote:decode+augment
                   the same corpus in a bucket (a copy uploaded to --remote, by default a GCS emulator started on
                   127.0.0.1, reached through gcsfs) against the local corpus: each step's records fetched by
                   concurrent range requests, several steps read ahead (docs/data.md, "Remote corpora")
It also times the checks made when a split is opened, the checksum verification of a run's first open, and (with
a remote stage) one batch of range reads from a local file, TensorFlow's ram:// filesystem and the bucket.

    python benchmarks/bench_input_pipeline.py                       # builds a 64 px synthetic corpus in /tmp
    python benchmarks/bench_input_pipeline.py --corpus DIR --image_size 224 --batches 100
    python benchmarks/bench_input_pipeline.py --stages remote:read+parse --remote gs://my-bucket/bench
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tensorflow as tf  # noqa: E402

from keras_nfnet import storage  # noqa: E402
from keras_nfnet.data import corpus, preprocess, records, verify  # noqa: E402
from keras_nfnet.data.pipeline import record_batches, train_dataset  # noqa: E402
from keras_nfnet.data.synthetic import make_synthetic_corpus  # noqa: E402


def _rate(ds, batches, batch_size, min_seconds, warmup=3):
    """Records/s over at least `batches` batches and `min_seconds` (fast stages need many batches to time)."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start, done = time.perf_counter(), 0
    while done < batches or time.perf_counter() - start < min_seconds:
        next(it)
        done += 1
    return done * batch_size / (time.perf_counter() - start)


def plain_records(files, batch, shuffle_buffer):
    return (tf.data.TFRecordDataset(files, num_parallel_reads=2).shuffle(shuffle_buffer).repeat()
            .batch(batch, drop_remainder=True))


def plain_train(files, batch, size, shuffle_buffer, randaugment, mix=False):
    spec = corpus.feature_spec()
    ra = None
    if randaugment:
        from official.vision.ops.augment import RandAugment

        ra = RandAugment(num_layers=2, magnitude=10, cutout_const=40 * size / 224, translate_const=100 * size / 224)

    def per_example(raw):
        ex = tf.io.parse_single_example(raw, spec)
        image = preprocess.train_image(preprocess.decode_image(ex["image/encoded"]), size,
                                       tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32))
        if ra is not None:
            image = tf.cast(ra.distort(tf.cast(image, tf.uint8)), tf.float32)
        return preprocess.normalize_image(image), tf.one_hot(ex["image/class/label"].values[0], 1000)

    ds = (tf.data.TFRecordDataset(files, num_parallel_reads=2).shuffle(shuffle_buffer).repeat()
          .map(per_example, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True))
    if mix:
        from official.vision.ops.augment import MixupAndCutmix

        mixer = MixupAndCutmix(num_classes=1000, mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.0)
        ds = ds.map(lambda x, y: mixer(x, tf.argmax(y, -1)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def without_id_tables(corpus_dir):
    """A copy of the corpus as written before id tables existed (no .ids files, no id entries in the metadata)."""
    out = os.path.join(tempfile.mkdtemp(), "no_ids")
    shutil.copytree(corpus_dir, out)
    meta_path = os.path.join(out, corpus.METADATA_FILE)
    meta = json.load(open(meta_path))
    for split in meta["splits"].values():
        for shard in split["shards"]:
            for key in ("ids_sha256", "first_id", "last_id"):
                shard.pop(key, None)
            path = records.ids_path(os.path.join(out, shard["file"]))
            if os.path.exists(path):
                os.remove(path)
    json.dump(meta, open(meta_path, "w"))
    return out


def time_open_checks(corpus_dir):
    info = corpus.load_metadata(corpus_dir)
    n = info.split("train").num_examples
    start = time.perf_counter()
    verify.open_split(info, "train").close()
    opened = time.perf_counter() - start
    start = time.perf_counter()
    hashed = verify.verify_checksums(info, ["train"])
    hashing = time.perf_counter() - start
    print(f"open checks of {n} records: {opened * 1e3:.1f} ms ({opened / n * 1e9:.0f} ns per record); checksums: "
          f"{hashed / 1e6:.1f} MB in {hashing:.2f} s ({hashed / 1e6 / hashing:.0f} MB/s)")


def upload(corpus_dir, remote):
    """Copy a local corpus to `remote` (metadata last, as the writer publishes)."""
    names = sorted(os.listdir(corpus_dir), key=lambda n: (n == corpus.METADATA_FILE, n))
    for name in names:
        with open(os.path.join(corpus_dir, name), "rb") as f:
            storage.write_bytes(storage.join(remote, name), f.read())
    return remote


def time_range_reads(corpus_dir, remote, batch, repeats=5):
    """Milliseconds to fetch one batch of records by (offset, length) from one shard: local, ram://, remote."""
    import numpy as np

    shard = corpus.load_metadata(corpus_dir).split("train").shards[0]["file"]
    index = records.read_index(os.path.join(corpus_dir, shard))
    picks = np.random.default_rng(0).choice(len(index), min(batch, len(index)), replace=False)
    ranges = [(int(o), int(n) + records.FRAME_BYTES) for o, n in index[picks]]
    ram = "ram://bench-range-reads"
    storage.write_bytes(storage.join(ram, shard), open(os.path.join(corpus_dir, shard), "rb").read())
    line = []
    for label, root in (("local (os.pread)", corpus_dir), ("ram:// (tf.io.gfile)", ram), ("remote (gcsfs)", remote)):
        path = storage.join(root, shard)
        best = min(_timed(lambda: storage.read_ranges(path, ranges)) for _ in range(repeats))
        line.append(f"{label} {best * 1e3:.1f} ms")
    storage.rmtree(ram)
    print(f"range reads of {len(ranges)} records from one shard: " + ", ".join(line))


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="existing corpus (default: build a synthetic one)")
    parser.add_argument("--num_images", type=int, default=4096)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40,
                        help="timed batches per row (after 3 warm-up), and at least --min_seconds")
    parser.add_argument("--min_seconds", type=float, default=4.0,
                        help="shortest timing window per row (2 s windows moved ratios by +-0.04 on 2 cores)")
    parser.add_argument("--shuffle_buffer", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats; the best is reported")
    parser.add_argument("--stages", default="read+parse,decode+augment,+RandAugment,+MixUp/CutMix,ids:read+parse,"
                        "ids:decode+augment,remote:read+parse,remote:decode+augment",
                        help="comma-separated subset of the stages to time")
    parser.add_argument("--remote", help="bucket directory to upload the corpus to for the remote stages "
                        "(default: a GCS emulator on 127.0.0.1; needs the test extra's gcp-storage-emulator)")
    args = parser.parse_args()
    corpus_dir = args.corpus
    if corpus_dir is None:
        corpus_dir = os.path.join(tempfile.mkdtemp(), "synthetic")
        print(f"building a {args.num_images}-image {args.image_size} px synthetic corpus in {corpus_dir} ...")
        stats = make_synthetic_corpus(corpus_dir, num_images=args.num_images, num_classes=1000,
                                      image_size=args.image_size)
        print(f"  generated at {stats['images_per_second']:.0f} images/s")
    files = corpus.load_metadata(corpus_dir).split("train").shard_paths(corpus_dir)
    time_open_checks(corpus_dir)
    stages = args.stages.split(",")
    remote = None
    if any(stage.startswith("remote:") for stage in stages):
        remote = args.remote
        if remote is None:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
            import gcs_emulator  # noqa: E402 - the tests' emulator helper

            emulator = gcs_emulator.Emulator().__enter__()  # serves (a daemon thread) until the process exits
            remote = f"gs://{gcs_emulator.BUCKET}/bench"
            print(f"GCS emulator at {emulator.host}")
        started = time.perf_counter()
        upload(corpus_dir, storage.join(remote, "corpus"))
        remote = storage.join(remote, "corpus")
        print(f"uploaded the corpus to {remote} in {time.perf_counter() - started:.1f} s")
        time_range_reads(corpus_dir, remote, args.batch)
    no_ids = without_id_tables(corpus_dir) if any(stage.startswith("ids:") for stage in stages) else None
    spec = corpus.feature_spec()
    b, size = args.batch, args.image_size
    rows = [
        ("read+parse", "plain TFRecordDataset+shuffle",
         lambda: plain_records(files, b, args.shuffle_buffer).map(lambda r: tf.io.parse_example(r, spec))),
        ("read+parse", "exactly-once (index + pread)",
         lambda: record_batches(corpus_dir, "train", b, seed=0).map(
             lambda e: tf.io.parse_example(e["serialized"], spec))),
        ("decode+augment", "plain TFRecordDataset+shuffle",
         lambda: plain_train(files, b, size, args.shuffle_buffer, randaugment=False)),
        ("decode+augment", "exactly-once",
         lambda: train_dataset(corpus_dir, "train", b, size, seed=0)),
        ("+RandAugment", "plain (tf-models stateful RA)",
         lambda: plain_train(files, b, size, args.shuffle_buffer, randaugment=True)),
        ("+RandAugment", "exactly-once (stateless RA)",
         lambda: train_dataset(corpus_dir, "train", b, size, seed=0, randaugment_layers=2,
                               randaugment_magnitude=10)),
        ("+MixUp/CutMix", "plain (tf-models RA + MixupAndCutmix)",
         lambda: plain_train(files, b, size, args.shuffle_buffer, randaugment=True, mix=True)),
        ("+MixUp/CutMix", "exactly-once (stateless MixUp/CutMix + RA)",
         lambda: train_dataset(corpus_dir, "train", b, size, seed=0, randaugment_layers=2,
                               randaugment_magnitude=10, mixup_cutmix=True)),
        ("ids:read+parse", "exactly-once, no id tables",
         lambda: record_batches(no_ids, "train", b, seed=0).map(lambda e: tf.io.parse_example(e["serialized"], spec))),
        ("ids:read+parse", "exactly-once, id tables",
         lambda: record_batches(corpus_dir, "train", b, seed=0).map(
             lambda e: tf.io.parse_example(e["serialized"], spec))),
        ("ids:decode+augment", "exactly-once, no id tables", lambda: train_dataset(no_ids, "train", b, size, seed=0)),
        ("ids:decode+augment", "exactly-once, id check", lambda: train_dataset(corpus_dir, "train", b, size, seed=0)),
        ("remote:read+parse", "exactly-once, local corpus",
         lambda: record_batches(corpus_dir, "train", b, seed=0).map(
             lambda e: tf.io.parse_example(e["serialized"], spec))),
        ("remote:read+parse", "exactly-once, remote corpus",
         lambda: record_batches(remote, "train", b, seed=0).map(lambda e: tf.io.parse_example(e["serialized"], spec))),
        ("remote:decode+augment", "exactly-once, local corpus",
         lambda: train_dataset(corpus_dir, "train", b, size, seed=0)),
        ("remote:decode+augment", "exactly-once, remote corpus", lambda: train_dataset(remote, "train", b, size, seed=0)),
    ]
    rows = [r for r in rows if r[0] in stages]
    results = {}
    for i in range(0, len(rows), 2):
        # Alternate the two pipelines of a stage, so that load from other processes hits both alike.
        datasets = {rows[j][:2]: rows[j][2]() for j in (i, i + 1)}
        for _ in range(args.repeats):
            for key, ds in datasets.items():
                results[key] = max(results.get(key, 0.0), _rate(ds, args.batches, b, args.min_seconds))
        for key in datasets:
            print(f"  measured {key[0]:15s} {key[1]:42s} {results[key]:9.0f} records/s", flush=True)
    print(f"\nbatch {b}, {size} px, {os.cpu_count()} CPUs, best of {args.repeats} x (>= {args.batches} batches "
          f"and >= {args.min_seconds:g} s)")
    print(f"| stage | pipeline | records/s | ratio to the stage's first row |")
    print(f"|---|---|---|---|")
    for i in range(0, len(rows), 2):
        stage, base = rows[i][0], results[rows[i][:2]]
        for j in (i, i + 1):
            rate = results[rows[j][:2]]
            print(f"| {stage} | {rows[j][1]} | {rate:.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
