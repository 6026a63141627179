"""Train and eval `tf.data` pipelines over a corpus, with exactly-once resumable sampling.

    ds = train_dataset(corpus_dir, "train", global_batch_size=4096, image_size=224, seed=0,
                       start_step=int(optimizer.iterations), input_context=ctx)

The batch at step s depends only on (seed, s); host h of H reads its slice of every global batch (from the
`tf.distribute.InputContext`); resuming at `start_step` continues the stream exactly, reading no skipped record.
Elements are `(images, labels)`: images float32 [b, size, size, 3] normalised per NFNET_SPEC, labels float32
[b, num_classes] (one-hot for single-label corpora, multi-hot for multi-label ones; MixUp/CutMix make them soft).
b is the per-replica batch size under a distribution strategy, else the global batch size.
"""
import collections
import contextlib
import logging
import re
import threading

import numpy as np
import tensorflow as tf

from keras_nfnet.data import augment as augment_lib
from keras_nfnet.data import corpus as corpus_lib
from keras_nfnet.data import preprocess
from keras_nfnet.data import records
from keras_nfnet.data import verify
from keras_nfnet.data.sampler import StepSampler, check_batching

log = logging.getLogger(__name__)
BAD_RECORD_POLICIES = ("raise", "skip")
_JPEG_MAGIC, _PNG_MAGIC, _JPEG_END, _PNG_END = (corpus_lib._JPEG_MAGIC, corpus_lib._PNG_MAGIC, corpus_lib._JPEG_END,
                                                 corpus_lib._PNG_END)
# The step reader is Python (holds the GIL): one background thread reads ahead; a second one only contends for the
# GIL (measured 132k vs 109k records/s read-only, benchmarks/bench_input_pipeline.py on 2 cores).
_READER_THREADS = 1
# A remote reader's threads mostly wait on the network (the GIL is free meanwhile): this many steps are read at
# once, each step's records fetched by concurrent range requests, so the stream reads ahead of the model.
_REMOTE_READER_THREADS = 4


def _reader_threads(reader):
    return _REMOTE_READER_THREADS if reader.remote else _READER_THREADS

_PADDING = b"padding"  # the problem text of eval's padding rows (not bad records)
_DECODER_REJECTED = b"decoder"  # the problem text of rows whose image TensorFlow's decoder rejected (under "skip")


class BadRecordReport:
    """Counts and lists the records skipped under `on_bad_record="skip"` (thread-safe); also logged as warnings.

    `skipped` lists every skip event ("split train shard X record Y: reason"; a record is reported each time the
    stream reaches it, prefetched batches included); `by_record` maps each distinct bad record's message to its
    reason code (records.REASONS), and `counts()` gives distinct bad records per reason."""

    MAX_RECORDS = 10_000  # distinct records kept by name (a corpus could be mostly damaged); counts go on

    def __init__(self):
        self._lock = threading.Lock()
        self.skipped = []
        self.by_record = {}
        self._extra = collections.Counter()  # distinct records beyond MAX_RECORDS, per reason

    @property
    def count(self):
        return len(self.skipped)

    def add(self, entries):
        """entries: [(reason code, message)]."""
        with self._lock:
            for code, message in entries:
                self.skipped.append(message)
                if message not in self.by_record:
                    if len(self.by_record) < self.MAX_RECORDS:
                        self.by_record[message] = code
                    else:
                        self._extra[code] += 1
        for code, message in entries:
            log.warning("skipped bad record (%s): %s", code, message)

    def counts(self):
        """{reason code: distinct bad records}."""
        with self._lock:
            return dict(collections.Counter(self.by_record.values()) + self._extra)

    def state(self):
        """JSON-able state (kept in checkpoints, so a resumed run reports the whole run's skips)."""
        with self._lock:
            return {"records": dict(self.by_record), "extra": dict(self._extra)}

    def load_state(self, state):
        with self._lock:
            self.by_record.update(state.get("records", {}))
            self._extra.update(state.get("extra", {}))

    def summary(self):
        counts = self.counts()
        return (f"{sum(counts.values())} bad records skipped"
                + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}): "
                   + "; ".join(list(self.by_record)[:5]) if counts else ""))


def _host_setup(global_batch_size, input_context):
    if input_context is None:
        return 1, 0, global_batch_size
    hosts, host = input_context.num_input_pipelines, input_context.input_pipeline_id
    per_replica = input_context.get_per_replica_batch_size(global_batch_size)
    return hosts, host, per_replica


def _open_split(corpus_dir, split):
    """(CorpusInfo, RecordReader) after the every-open checks (verify.open_split): counts, index contiguity, id
    tables against the metadata; CorruptRecordError / FileNotFoundError naming the split and shard."""
    info = corpus_lib.load_metadata(corpus_dir)
    return info, verify.open_split(info, split)


BAD_RECORD = "bad record: "  # how every bad-record error message starts (found again inside TensorFlow's errors)


def _make_step_reader(sampler, reader, on_bad_record, pad_beyond=None):
    """numpy function: step -> this host's rows (payloads, positions, copies, rows, shards, locals, problems, ok,
    expected ids).

    Rows carry their (shard, record) numbers as integers; error messages are formatted only when a record is bad,
    so a good batch costs no string work. A bad row's problem is "code|message".
    """

    def read_step(step):
        rows, positions, copies = sampler.rows(int(step))
        recs = sampler.records(positions)
        ok = np.ones(len(rows), bool)
        if pad_beyond is not None:
            ok = positions < pad_beyond
            recs = np.where(ok, recs, 0)
        real = np.flatnonzero(ok)  # padding rows read nothing
        got, got_errors = reader.read_many(recs[real], raise_errors=False)
        if got_errors and on_bad_record == "raise":
            raise records.CorruptRecordError(BAD_RECORD + got_errors[min(got_errors)][1])
        payloads = np.full(len(rows), b"", dtype=object)
        payloads[real] = got
        problems = np.full(len(rows), b"", dtype=object)
        for j, (code, message) in got_errors.items():
            i = int(real[j])
            problems[i], ok[i], payloads[i] = f"{code}|{message}".encode(), False, b""
        if pad_beyond is not None:
            problems[positions >= pad_beyond] = _PADDING
        shards, locals_ = reader.locate_many(recs)
        ids = reader.expected_ids(recs) if reader.has_ids else np.zeros(len(rows), np.int64)
        return payloads, positions, copies, rows, shards, locals_, problems, ok, ids

    def fn(step):
        out = tf.numpy_function(
            read_step, [step],
            [tf.string, tf.int64, tf.int64, tf.int64, tf.int32, tf.int64, tf.string, tf.bool, tf.int64],
            stateful=False)
        for t in out:
            t.set_shape([sampler.local_batch_size])
        return out

    return fn


def _image_ok(data):
    """Cheap check that encoded bytes are a complete JPEG or PNG (magic number and end marker)."""
    n = tf.strings.length(data)
    head3, head8 = tf.strings.substr(data, 0, 3), tf.strings.substr(data, 0, 8)
    jpeg = tf.equal(head3, _JPEG_MAGIC) & tf.equal(tf.strings.substr(data, tf.maximum(n - 2, 0), 2), _JPEG_END)
    png = tf.equal(head8, _PNG_MAGIC) & tf.equal(tf.strings.substr(data, tf.maximum(n - 8, 0), 8), _PNG_END)
    return jpeg | png


def _parse_checked(payload, where, num_classes, on_bad_record, expected_id=None):
    """Parse one record -> (image bytes, label ids, id, ok); invalid labels or images, or an id other than
    `expected_id` (the id table's; None = no id tables), raise or mark not-ok.

    `where()` builds the "split S shard X record Y" string tensor; it is only called on the failing branch.
    A payload that does not parse fails inside TensorFlow without naming the record; `naming_bad_records` (raise)
    and the report stage (skip) name it.
    """
    ex = tf.io.parse_single_example(payload, corpus_lib.feature_spec())
    labels = ex[corpus_lib.LABEL_KEY].values
    label_ok = (tf.size(labels) > 0) & tf.reduce_all((labels >= 0) & (labels < num_classes))
    image_ok = _image_ok(ex[corpus_lib.IMAGE_KEY])
    id_ok = tf.constant(True) if expected_id is None else tf.equal(ex[corpus_lib.ID_KEY], expected_id)
    if on_bad_record == "raise":
        # The messages are only built on the failing branch, so a good record costs three boolean checks.
        def fail():
            label_text = tf.strings.join([
                tf.where(tf.size(labels) > 0, "label(s) ", f"feature {corpus_lib.LABEL_KEY} holds no label"),
                tf.strings.reduce_join(tf.strings.as_string(labels), separator=","),
                tf.where(tf.size(labels) > 0, f" outside [0, {num_classes})", "")])
            id_text = tf.strings.join([
                "image/id ", tf.strings.as_string(ex[corpus_lib.ID_KEY]), " is not the id ",
                tf.strings.as_string(expected_id if expected_id is not None else tf.constant(0, tf.int64)),
                " its id table lists: the shard, its index or its id table was swapped, copied or changed"])
            image = ex[corpus_lib.IMAGE_KEY]
            image_text = tf.where(tf.strings.length(image) == 0, "image/encoded is empty (0 bytes)", tf.where(
                tf.equal(tf.strings.substr(image, 0, 3), _JPEG_MAGIC) | tf.equal(tf.strings.substr(image, 0, 8),
                                                                                 _PNG_MAGIC),
                "image/encoded is a truncated JPEG or PNG (no end marker)", "image/encoded is not a JPEG or PNG"))
            reason = tf.where(id_ok, tf.where(label_ok, image_text, label_text), id_text)
            message = tf.strings.join([BAD_RECORD, where(), ": ", reason])
            with tf.control_dependencies([tf.debugging.Assert(False, [message], summarize=1)]):
                return tf.constant(False)

        checked = tf.cond(label_ok & image_ok & id_ok, lambda: tf.constant(True), fail)
        with tf.control_dependencies([checked]):  # nothing is decoded before the check has passed
            return tf.identity(ex[corpus_lib.IMAGE_KEY]), tf.identity(labels), ex[corpus_lib.ID_KEY], checked
    return ex[corpus_lib.IMAGE_KEY], labels, ex[corpus_lib.ID_KEY], label_ok & image_ok & id_ok


class _Builder:
    """Shared per-example and per-batch stages of the train and eval pipelines."""

    def __init__(self, info, reader, image_size, seed, on_bad_record, train, crop=True, flip=True, mix=False,
                 crop_fraction=None):
        self.num_classes = info.num_classes
        self.shard_names = list(reader.names)
        self.split = reader.split
        self.check_ids = reader.has_ids
        self.image_size = image_size
        self.seed = tf.constant([seed & 0x7FFFFFFFFFFFFFFF, 0x6E666E6574], tf.int64)  # (seed, "nfnet")
        self.on_bad_record = on_bad_record
        self.train, self.crop, self.flip, self.mix = train, crop, flip, mix
        self.crop_fraction = crop_fraction
        # Training under "raise" has no padding rows and fails on any bad one, so every row that gets here is
        # good and the per-row branches can go (decode+augment went from 0.91 to 0.95 of the plain pipeline).
        self.rows_always_good = train and on_bad_record == "raise"

    def example_seed(self, position, copy):
        key = tf.random.experimental.stateless_fold_in(self.seed, position)
        return tf.random.experimental.stateless_fold_in(key, copy)

    def per_example(self, payload, position, copy, row, shard, local, problem, ok, expected_id):
        size, c = self.image_size, self.num_classes

        def where():
            names = tf.constant(self.shard_names)
            return tf.strings.join([f"split {self.split} shard ", tf.gather(names, shard), " record ",
                                    tf.strings.as_string(local)])

        def good():
            data, labels, ex_id, valid = _parse_checked(payload, where, c, self.on_bad_record,
                                                        expected_id if self.check_ids else None)
            return data, labels, ex_id, valid

        def bad():
            return tf.constant(b""), tf.zeros([0], tf.int64), tf.constant(-1, tf.int64), tf.constant(False)

        if self.rows_always_good:
            data, labels, ex_id, valid = good()
        else:
            data, labels, ex_id, valid = tf.cond(ok, good, bad)
        seeds = tf.random.experimental.stateless_split(self.example_seed(position, copy), 3)

        def decode():
            image = preprocess.decode_image(data)
            if self.train:
                return preprocess.train_image(image, size, seeds[0], crop=self.crop, flip=self.flip)
            return preprocess.eval_image(image, size, self.crop_fraction)

        # Multi-hot (one-hot for a single label); out-of-range ids give zero rows and an invalid record.
        label_vec = tf.minimum(tf.reduce_sum(tf.one_hot(labels, c, dtype=tf.float32), axis=0), 1.0)
        if self.rows_always_good:
            image = decode()
        else:
            image = tf.cond(valid, decode, lambda: tf.zeros([size, size, 3], tf.float32))
            label_vec = tf.where(valid, label_vec, tf.zeros([c], tf.float32))
        out = {"image": image, "label": label_vec, "id": ex_id, "position": position, "copy": copy, "row": row,
               "valid": valid, "shard": shard, "local": local, "problem": problem, "ra_seed": seeds[2]}
        if self.mix:
            out["mix"] = augment_lib.mix_draws(seeds[1])
        return out


def diagnose_record(reader, record, num_classes):
    """(reason code, message naming the record) for global record `record`, or None when it passes every check
    made in Python (framing, CRC, Example, features, labels, id, image markers); the image's body is not decoded."""
    payloads, errors = reader.read_many(np.array([record]), raise_errors=False)
    if errors:
        return errors[0]
    ids = reader.expected_ids(np.array([record]))
    problem = corpus_lib.check_example(payloads[0], num_classes, None if ids is None else int(ids[0]))
    return None if problem is None else (problem[0], f"{reader.where(record)}: {problem[1]}")


def _report_stage(report, reader, num_classes):
    def note(valid, shards, locals_, problems):
        bad = []
        for i in np.flatnonzero(~valid):
            if problems[i] == _PADDING:
                continue
            if problems[i] and problems[i] != _DECODER_REJECTED:  # the reader's own finding
                bad.append(tuple(problems[i].decode().split("|", 1)))
                continue
            # A graph check failed or the map failed inside TensorFlow: find out why, in Python (bad rows only).
            record = int(reader.starts[shards[i]] + locals_[i])
            bad.append(diagnose_record(reader, record, num_classes) or (
                "undecodable_image", f"{reader.where(record)}: TensorFlow's decoder rejects the image"))
        if bad:
            report.add(bad)
        return np.int64(len(bad))

    def fn(batch):
        n = tf.numpy_function(note, [batch["valid"], batch["shard"], batch["local"], batch["problem"]], tf.int64,
                              stateful=True)
        with tf.control_dependencies([n]):
            batch = dict(batch, valid=tf.identity(batch["valid"]))
        return batch

    return fn


_STEP_KEYS = ("payload", "position", "copy", "row", "shard", "local", "problem", "ok", "expected_id")  # reader columns


def _examples_to_batches(reads, per_example, batch, on_bad_record, num_parallel_calls):
    """Step reads -> batches of `per_example` results (dicts), one batch per step.

    Under "skip", an example whose map fails inside TensorFlow (an image that passes the marker check but that the
    decoder rejects: no graph op can catch that error) keeps its slot with weight 0 and is reported, instead of
    failing the stream: each step's examples are mapped in their own small dataset with `ignore_errors`, and the
    survivors are scattered back into their slots.
    """
    if on_bad_record == "raise":
        return reads.unbatch().map(per_example, num_parallel_calls=num_parallel_calls, deterministic=True).batch(
            batch, drop_remainder=True)

    def per_step(*cols):
        step = dict(zip(_STEP_KEYS, cols))
        examples = tf.data.Dataset.from_tensor_slices((tf.range(batch), cols)).map(
            lambda slot, c: (slot, per_example(*c)), num_parallel_calls=num_parallel_calls,
            deterministic=True).ignore_errors()
        empty = tf.nest.map_structure(lambda spec: tf.zeros([0] + spec.shape.as_list(), spec.dtype),
                                      examples.element_spec)
        got = examples.batch(batch).concatenate(tf.data.Dataset.from_tensors(empty)).take(1)  # one batch, maybe empty

        def fill(slots, e):
            index = slots[:, None]
            present = tf.scatter_nd(index, tf.ones_like(slots), [batch]) > 0
            out = {}
            for key, value in e.items():
                if key in step:  # per-row data the step reader gave: complete already
                    out[key] = step[key]
                elif value.dtype == tf.bool:
                    out[key] = tf.scatter_nd(index, tf.cast(value, tf.int32), [batch]) > 0
                else:
                    out[key] = tf.scatter_nd(index, value, tf.concat([[batch], tf.shape(value)[1:]], 0))
                    out[key].set_shape([batch] + value.shape.as_list()[1:])
            out["valid"] = out["valid"] & present
            out["problem"] = tf.where(present, step["problem"], _DECODER_REJECTED)
            return out

        return got.map(fill)

    return reads.interleave(per_step, cycle_length=2, num_parallel_calls=2, deterministic=True)


def _check_common(split, image_size, on_bad_record, global_batch_size):
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a split name such as 'train', got {split!r}")
    preprocess._check_size(image_size)
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}")
    check_batching(global_batch_size)


def train_dataset(corpus_dir, split, global_batch_size, image_size, seed, start_step=0, input_context=None, *,
                  crop=True, flip=True, mixup_cutmix=False, randaugment_layers=0, randaugment_magnitude=10.0,
                  repeats=1, on_bad_record="raise", bad_record_report=None, with_info=False,
                  num_parallel_calls=tf.data.AUTOTUNE):
    """Infinite training stream whose step-s batch is fixed by (seed, s); see the module docstring.

    Args:
      crop, flip: Inception crop (area 0.08-1, aspect 3/4-4/3) and horizontal flip, then bicubic resize.
      mixup_cutmix: MixUp (alpha 0.2) on even pairs and CutMix (alpha 1) on odd pairs of rows.
      randaugment_layers, randaugment_magnitude: RandAugment after mixing (0 layers = off).
      repeats: repeated augmentation multiplicity K (each image K times per batch, independently augmented).
      on_bad_record: "raise" (error naming shard and record) or "skip": bad rows get a zero image and label and
        weight 0, elements become (images, labels, weights), and each skip is counted in `bad_record_report`
        (a BadRecordReport) and logged.
      with_info: elements become (images, labels, info) with info = {id, position, copy, weight} (for tools).
    """
    _check_common(split, image_size, on_bad_record, global_batch_size)
    if not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise ValueError(f"start_step must be an int >= 0, got {start_step!r}")
    hosts, host, batch = _host_setup(global_batch_size, input_context)
    group = 2 * repeats
    if mixup_cutmix and batch % group:
        raise ValueError(f"mixup_cutmix mixes rows in groups of 2 * repeats = {group}; the per-replica batch "
                         f"{batch} must be a multiple of it")
    info, reader = _open_split(corpus_dir, split)
    sampler = StepSampler(reader.num_records, global_batch_size, seed, repeats=repeats, num_hosts=hosts, host=host)
    builder = _Builder(info, reader, image_size, seed, on_bad_record, train=True, crop=crop, flip=flip,
                       mix=mixup_cutmix)
    if on_bad_record == "skip" and bad_record_report is None:
        bad_record_report = BadRecordReport()

    ds = tf.data.Dataset.range(int(start_step), np.iinfo(np.int64).max)
    ds = ds.map(_make_step_reader(sampler, reader, on_bad_record), num_parallel_calls=_reader_threads(reader),
                deterministic=True)
    translate = 100.0 * image_size / 224.0  # tf-models' constants are for 224 px; keep them proportional
    cutout = 40.0 * image_size / 224.0

    def rand_augment(e):
        image = augment_lib.rand_augment(e["image"], e["ra_seed"], randaugment_layers, randaugment_magnitude,
                                         cutout_const=cutout, translate_const=translate)
        return dict(e, image=tf.cast(image, tf.float32))

    def mix(b):
        images, labels = augment_lib.mixup_cutmix(b["image"], b["label"], b["mix"], b["row"], group_size=group)
        return dict(b, image=images, label=labels)

    per_example = builder.per_example
    if randaugment_layers and not mixup_cutmix:  # no mixing: RandAugment in the per-example stage
        per_example = lambda *cols: rand_augment(builder.per_example(*cols))  # noqa: E731
    ds = _examples_to_batches(ds, per_example, batch, on_bad_record, num_parallel_calls)
    if on_bad_record == "skip":
        ds = ds.map(_report_stage(bad_record_report, reader, info.num_classes))
    if mixup_cutmix:
        ds = ds.map(mix, num_parallel_calls=num_parallel_calls, deterministic=True)
        if randaugment_layers:  # RandAugment follows mixing (NFNET_SPEC section 4): back to examples for it
            ds = ds.unbatch().map(rand_augment, num_parallel_calls=num_parallel_calls, deterministic=True)
            ds = ds.batch(batch, drop_remainder=True)
    ds = ds.map(lambda b: _finish(b, on_bad_record, with_info), num_parallel_calls=num_parallel_calls,
                deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _finish(b, on_bad_record, with_info, eval_mode=False):
    images = preprocess.normalize_image(b["image"])
    weights = tf.cast(b["valid"], tf.float32)
    if with_info:
        return images, b["label"], {"id": b["id"], "position": b["position"], "copy": b["copy"], "weight": weights}
    if eval_mode or on_bad_record == "skip":
        return images, b["label"], weights
    return images, b["label"]


def eval_steps(corpus_dir, split, global_batch_size):
    """Number of batches `eval_dataset` yields: ceil(split size / global batch size)."""
    n = corpus_lib.load_metadata(corpus_dir).split(split).num_examples
    return -(-n // global_batch_size)


def eval_dataset(corpus_dir, split, global_batch_size, image_size, input_context=None, *, crop_fraction=None,
                 on_bad_record="raise", bad_record_report=None, with_info=False,
                 num_parallel_calls=tf.data.AUTOTUNE):
    """Finite stream covering every example of `split` exactly once, in corpus order.

    Elements are (images, labels, weights): the last global batch is padded to a static shape with zero images
    whose weight is 0, so weighted metrics count each real example once. Eval preprocessing: the evaluation view
    `preprocess.eval_image(image, image_size, crop_fraction)` (None = the papers' resize to (size + 32)^2 and
    centre crop; 1.0 = the whole image), then normalise.
    """
    _check_common(split, image_size, on_bad_record, global_batch_size)
    crop_fraction = preprocess.check_crop_fraction(crop_fraction)
    hosts, host, batch = _host_setup(global_batch_size, input_context)
    info, reader = _open_split(corpus_dir, split)
    sampler = StepSampler(reader.num_records, global_batch_size, 0, shuffle=False, num_hosts=hosts, host=host)
    builder = _Builder(info, reader, image_size, 0, on_bad_record, train=False, crop_fraction=crop_fraction)
    if on_bad_record == "skip" and bad_record_report is None:
        bad_record_report = BadRecordReport()
    steps = -(-reader.num_records // global_batch_size)
    ds = tf.data.Dataset.range(steps)
    ds = ds.map(_make_step_reader(sampler, reader, on_bad_record, pad_beyond=reader.num_records),
                num_parallel_calls=_reader_threads(reader), deterministic=True)
    ds = _examples_to_batches(ds, builder.per_example, batch, on_bad_record, num_parallel_calls)
    if on_bad_record == "skip":
        ds = ds.map(_report_stage(bad_record_report, reader, info.num_classes))
    ds = ds.map(lambda b: _finish(b, on_bad_record, with_info, eval_mode=True))
    return ds.prefetch(tf.data.AUTOTUNE)


def record_batches(corpus_dir, split, global_batch_size, seed, start_step=0, input_context=None, repeats=1):
    """The raw sampling stream: per step, this host's serialized records and their positions (no decoding).

    Elements are dicts {"serialized": string [b_host], "position": int64 [b_host]}, one per global step; the
    same (seed, step) -> records mapping as `train_dataset`. For tools and the input benchmark.
    """
    check_batching(global_batch_size)
    hosts, host, _ = _host_setup(global_batch_size, input_context)
    _, reader = _open_split(corpus_dir, split)
    sampler = StepSampler(reader.num_records, global_batch_size, seed, repeats=repeats, num_hosts=hosts, host=host)
    ds = tf.data.Dataset.range(int(start_step), np.iinfo(np.int64).max)
    ds = ds.map(_make_step_reader(sampler, reader, "raise"), num_parallel_calls=_reader_threads(reader),
                deterministic=True)
    return ds.map(lambda data, position, *_: {"serialized": data, "position": position})


# What TensorFlow's anonymous errors say when a record fails to parse or its image fails to decode in a map.
_INPUT_OP = re.compile(r"Decode(Image|Jpeg|Png|Gif|Bmp)\b|decode_image|ParseExample|ParseSingleExample|"
                       r"parse_single_example|Could not parse example|Feature: \S+ \(data type: \w+\) is required|"
                       r"Key: image/|Data types don't match")
_MARKED = re.compile(re.escape(BAD_RECORD) + r"([^\]\n]*)")
# A failing map in the training stream is at most this many steps ahead of the model (the prefetch buffers).
LOOKAHEAD_STEPS = 32


def train_step_records(corpus_dir, split, global_batch_size, seed, first_step, repeats=1,
                       num_steps=LOOKAHEAD_STEPS):
    """Global record numbers (sorted, unique) that `train_dataset` reads at steps [first_step, first_step +
    num_steps); for a failure while the model is at step s, first_step=s covers the failing one."""
    n = corpus_lib.load_metadata(corpus_dir).split(split).num_examples
    sampler = StepSampler(n, global_batch_size, seed, repeats=repeats)
    recs = [sampler.records(sampler.rows(step)[1]) for step in range(int(first_step), int(first_step) + num_steps)]
    return np.unique(np.concatenate(recs)) if recs else np.zeros([0], np.int64)


def find_bad_records(corpus_dir, split, recs=None):
    """[(reason code, "split S shard X record Y: reason"), ...] for the records of `split` (all, or global
    numbers `recs`) that the pipeline would reject: everything `diagnose_record` checks, then the image decoded
    with TensorFlow's decoder."""
    info, reader = _open_split(corpus_dir, split)
    recs = np.arange(reader.num_records) if recs is None else np.asarray(recs, np.int64)
    found = []
    for record in recs.tolist():
        problem = diagnose_record(reader, record, info.num_classes)
        if problem is None:
            image = corpus_lib.decode_example(reader.read(record))["image"]
            try:
                preprocess.decode_image(tf.constant(image))
            except Exception as err:  # noqa: BLE001 - any decoder failure, reported with its record
                text = str(getattr(err, "message", err)).splitlines()[0]
                text = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", text)  # TensorFlow's node and op names
                problem = ("undecodable_image", f"{reader.where(record)}: TensorFlow's decoder rejects the image "
                                                f"({text})")
        if problem is not None:
            found.append(problem)
    reader.close()
    return found


@contextlib.contextmanager
def naming_bad_records(corpus_dir, candidates):
    """Turn a bad record's error inside the block into one CorruptRecordError whose one-line message names the
    split, shard, record and reason ("bad record: split train shard X record Y: payload checksum mismatch ...").

    Errors the pipeline raised itself carry that text inside TensorFlow's error and are shortened to it. A record
    that fails inside a TensorFlow op (not an Example, a required feature missing, an image the decoder rejects)
    fails anonymously: on such an error `candidates()` gives [(split, record numbers or None for the whole split),
    ...] that may hold the culprit (for training, the records of the steps around the current one:
    `train_step_records`); they are checked one by one in Python and the first bad one is named. Other errors
    pass through.
    """
    try:
        yield
    except (tf.errors.OpError, UnicodeDecodeError) as err:
        # A record that is not an Example puts its raw bytes into the parse op's message, and TensorFlow then fails
        # to decode that message: the UnicodeDecodeError stands for an anonymous input-op error.
        message = getattr(err, "message", "") or ""
        marked = _MARKED.search(message)
        if marked:
            raise records.CorruptRecordError(BAD_RECORD + marked.group(1).strip()) from err
        if isinstance(err, tf.errors.OpError) and not _INPUT_OP.search(message):
            raise
        print("an input-pipeline op failed; looking for the bad record among the records it read ...", flush=True)
        for split, recs in candidates():
            bad = find_bad_records(corpus_dir, split, recs)
            if bad:
                more = (f" ({len(bad) - 1} more bad record(s) nearby; python -m keras_nfnet.data.inspect_corpus "
                        f"--deep {corpus_dir} lists them all)" if len(bad) > 1 else "")
                raise records.CorruptRecordError(BAD_RECORD + bad[0][1] + more) from err
        raise
