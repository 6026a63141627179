"""Every kind of damaged input, run through the pretraining app in a subprocess (table-driven): exit status 2, one
`error:` line naming the place (split, shard, record, or the file) and the reason, no traceback, nothing written to
the work directory that a later run would trust; and the undamaged corpus trains (the negative control).

One tiny corpus (32 train images in two shards of 16, 8 held-out, 32 px) and one step of the whole train split, so a
record anywhere in the split is read at step 0: a train-split case must leave no checkpoint at all. Record-level
damage written by a (simulated) buggy producer gets matching checksums in the metadata, so the check that catches
it is the one made when the record is read; damage to bytes after the corpus was written is caught by the
checksums at the run's first open, or, with verify_checksums=false, when the record is read.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keras_nfnet.data import corpus as corpus_lib
from keras_nfnet.data import records
from keras_nfnet.data.inspect_corpus import main as inspect_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, HOLDOUT, PER_SHARD = 32, 8, 16


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    from keras_nfnet.data.synthetic import make_synthetic_corpus

    path = str(tmp_path_factory.mktemp("clean") / "corpus")
    make_synthetic_corpus(path, num_images=TRAIN, num_classes=4, image_size=32, num_holdout=HOLDOUT, seed=0,
                          multi_label=False, examples_per_shard=PER_SHARD)
    return path


# --- ways to damage a corpus --------------------------------------------------------------------------------

def _path(d, split, shard):
    return os.path.join(d, f"{split}-{shard:05d}.tfrecord")


def _edit_meta(d, fn):
    path = os.path.join(d, corpus_lib.METADATA_FILE)
    meta = json.load(open(path))
    fn(meta)
    json.dump(meta, open(path, "w"))


def _shard_meta(meta, split, shard):
    return meta["splits"][split]["shards"][shard]


def _refresh_checksums(d, split, shard):
    """What a producer that wrote the bad bytes itself would have recorded."""
    path = _path(d, split, shard)

    def fix(meta):
        entry = _shard_meta(meta, split, shard)
        entry["sha256"] = corpus_lib.sha256_file(path)
        entry["index_sha256"] = corpus_lib.sha256_file(records.index_path(path))
    _edit_meta(d, fix)


def _flip_byte(d, split, shard, record, byte=40):
    path = _path(d, split, shard)
    raw = bytearray(open(path, "rb").read())
    raw[int(records.read_index(path)[record, 0]) + records.HEADER_BYTES + byte] ^= 0x5A
    open(path, "wb").write(bytes(raw))


def _record(d, split, shard, record):
    path = _path(d, split, shard)
    offset, length = (int(v) for v in records.read_index(path)[record])
    return open(path, "rb").read()[offset + records.HEADER_BYTES:offset + records.HEADER_BYTES + length]


def _replace(d, split, shard, record, payload, refresh=True):
    """Put `payload` (well framed, valid CRCs) in place of one record; the index follows."""
    path = _path(d, split, shard)
    index = np.array(records.read_index(path))
    raw = open(path, "rb").read()
    offset, length = (int(v) for v in index[record])
    open(path, "wb").write(raw[:offset] + records.frame_record(payload) + raw[offset + records.FRAME_BYTES + length:])
    index[record, 1] = len(payload)
    index[record + 1:, 0] += len(payload) - length
    records.write_index(path, index)
    if refresh:
        _refresh_checksums(d, split, shard)


def _example(d, split, shard, record, image=None, labels=None, example_id=None, drop=()):
    """The record rebuilt with some features changed or dropped."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example.FromString(_record(d, split, shard, record))
    f = ex.features.feature
    if image is not None:
        f[corpus_lib.IMAGE_KEY].bytes_list.value[0] = image
    if labels is not None:
        del f[corpus_lib.LABEL_KEY].int64_list.value[:]
        f[corpus_lib.LABEL_KEY].int64_list.value.extend(labels)
    if example_id is not None:
        f[corpus_lib.ID_KEY].int64_list.value[0] = example_id
    for key in drop:
        del f[key]
    return ex.SerializeToString()


def _png_with_corrupt_body():
    import tensorflow as tf

    data = bytearray(tf.io.encode_png(np.full((32, 32, 3), 90, np.uint8)).numpy())
    start = data.index(b"IDAT") + 4
    data[start:start + 12] = b"\xff" * 12
    return bytes(data)


def _swap_shards(d, a, b, copy=False):
    for suffix in ("", records.INDEX_SUFFIX, records.IDS_SUFFIX):
        pa, pb = _path(d, "train", a) + suffix, _path(d, "train", b) + suffix
        if copy:
            shutil.copy(pa, pb)
        else:
            os.rename(pa, pa + ".x")
            os.rename(pb, pa)
            os.rename(pa + ".x", pb)


def _duplicate_index_entry(d):
    """Entry 5 becomes a copy of entry 4: same count and sizes, record 4 read twice and record 5 never."""
    path = _path(d, "train", 1)
    index = np.array(records.read_index(path))
    index[5] = index[4]
    records.write_index(path, index)


def _bad_offset(d):
    path = _path(d, "train", 0)
    index = np.array(records.read_index(path))
    index[3, 0] += 5
    records.write_index(path, index)


def _truncate(path, drop):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - drop)


SHARD1, HOLD = "split train shard train-00001.tfrecord", "split holdout shard holdout-00000.tfrecord"
META = re.escape(corpus_lib.METADATA_FILE)

# (name, damage(corpus_dir), extra config overrides, pattern the one error line must match)
CASES = [
    ("crc_train", lambda d: _flip_byte(d, "train", 1, 3), "verify_checksums=false",
     rf"bad record: {SHARD1} record 3: payload checksum mismatch \(CRC-32C"),
    ("crc_train_checksums", lambda d: _flip_byte(d, "train", 1, 3), "",
     rf"{SHARD1}: shard sha256 \w+\.\.\. does not match the metadata's \w+\.\.\.; {SHARD1} record 3: payload "
     r"checksum mismatch"),
    ("crc_holdout", lambda d: _flip_byte(d, "holdout", 0, 2), "verify_checksums=false",
     rf"bad record: {HOLD} record 2: payload checksum mismatch"),
    ("crc_holdout_checksums", lambda d: _flip_byte(d, "holdout", 0, 2), "",
     rf"{HOLD}: shard sha256 .* {HOLD} record 2: payload checksum mismatch"),
    ("index_bad_offset", _bad_offset, "",
     r"split train shard train-00000.tfrecord: index entry 3 \(offset \d+, length \d+\) does not follow"),
    ("index_entry_duplicated", _duplicate_index_entry, "verify_checksums=false",
     rf"{SHARD1}: index entry 5 .* does not follow the previous record"),
    ("index_not_multiple_of_16", lambda d: _truncate(records.index_path(_path(d, "train", 0)), 3), "",
     r"record index train-00000.tfrecord.index is not a whole number of \(offset, length\) pairs"),
    ("shards_swapped", lambda d: _swap_shards(d, 0, 1), "verify_checksums=false",
     r"split train shard train-00000.tfrecord: holds ids \d+\.\.\d+, the metadata lists \d+\.\.\d+ for this "
     r"shard: shards were swapped or copied"),
    ("shard_copied_over_another", lambda d: _swap_shards(d, 0, 1, copy=True), "verify_checksums=false",
     rf"{SHARD1}: holds ids \d+\.\.\d+, the metadata lists"),
    ("shard_truncated", lambda d: _truncate(_path(d, "train", 1), 7), "",
     rf"{SHARD1} is truncated: its index needs \d+ bytes, the file has \d+"),
    ("id_table_missing", lambda d: os.remove(records.ids_path(_path(d, "train", 1))), "",
     rf"{SHARD1}: id table train-00001.tfrecord.ids is missing"),
    ("metadata_sha256_wrong", lambda d: _edit_meta(d, lambda m: _shard_meta(m, "train", 0).update(sha256="0" * 64)),
     "", r"split train shard train-00000.tfrecord: shard sha256 \w+\.\.\. does not match the metadata's "
         r"000000000000\.\.\.; its framing and CRCs are intact"),
    ("metadata_count_wrong", lambda d: _edit_meta(d, lambda m: _shard_meta(m, "train", 1).update(num_examples=15)),
     "", rf"{SHARD1}: its index lists 16 records, the metadata says 15"),
    ("metadata_key_missing", lambda d: _edit_meta(d, lambda m: m.pop("num_classes")), "",
     rf"{META} has no 'num_classes' entry"),
    ("metadata_not_json", lambda d: open(os.path.join(d, corpus_lib.METADATA_FILE), "a").write("}{"), "",
     rf"{META} is not valid JSON"),
    ("record_not_an_example", lambda d: _replace(d, "train", 1, 6, b"\x0a\xff\xff\xff\xff garbage"), "",
     rf"bad record: {SHARD1} record 6: not a tf.train.Example"),
    ("record_without_id", lambda d: _replace(d, "train", 1, 6, _example(d, "train", 1, 6, drop=[corpus_lib.ID_KEY])),
     "", rf"bad record: {SHARD1} record 6: feature image/id is missing"),
    ("record_without_image", lambda d: _replace(d, "train", 1, 6, _example(d, "train", 1, 6,
                                                                          drop=[corpus_lib.IMAGE_KEY])),
     "", rf"bad record: {SHARD1} record 6: feature image/encoded is missing"),
    ("label_missing", lambda d: _replace(d, "train", 1, 6, _example(d, "train", 1, 6, labels=[])), "",
     rf"bad record: {SHARD1} record 6: feature image/class/label holds no label"),
    ("label_out_of_range", lambda d: _replace(d, "train", 1, 6, _example(d, "train", 1, 6, labels=[9])), "",
     rf"bad record: {SHARD1} record 6: label\(s\) 9 outside \[0, 4\)"),
    ("label_out_of_range_holdout", lambda d: _replace(d, "holdout", 0, 1, _example(d, "holdout", 0, 1, labels=[-1])),
     "", rf"bad record: {HOLD} record 1: label\(s\) -1 outside \[0, 4\)"),
    ("image_not_an_image", lambda d: _replace(d, "train", 0, 2, _example(d, "train", 0, 2, image=b"GIF89a...")), "",
     r"bad record: split train shard train-00000.tfrecord record 2: image/encoded is not a JPEG or PNG"),
    ("image_empty", lambda d: _replace(d, "train", 0, 2, _example(d, "train", 0, 2, image=b"")), "",
     r"bad record: split train shard train-00000.tfrecord record 2: image/encoded is empty \(0 bytes\)"),
    ("image_truncated", lambda d: _replace(d, "train", 0, 2, _example(
        d, "train", 0, 2, image=corpus_lib.decode_example(_record(d, "train", 0, 2))["image"][:-30])), "",
     r"bad record: split train shard train-00000.tfrecord record 2: image/encoded is a truncated JPEG or PNG"),
    ("image_decoder_rejects", lambda d: _replace(d, "train", 0, 2, _example(d, "train", 0, 2,
                                                                           image=_png_with_corrupt_body())), "",
     r"bad record: split train shard train-00000.tfrecord record 2: TensorFlow's decoder rejects the image"),
    ("record_from_elsewhere", lambda d: _replace(d, "train", 1, 6, _record(d, "train", 0, 9)), "",
     rf"bad record: {SHARD1} record 6: image/id \d+ is not the id \d+ its id table lists"),
    ("workdir_is_a_file", None, "", r"workdir \S+ exists and is not a directory"),
]


def _overrides(corpus_dir, overrides=""):
    text = (f"corpus={corpus_dir},global_batch_size={TRAIN},epochs=1,peak_flops_per_device=1e11,verbose=0"
            + (f",{overrides}" if overrides else ""))
    return [f"--config.{kv}" for kv in text.split(",")]


def _argv(corpus_dir, workdir, overrides=""):
    return ["trainers/pretrain.py", "--config=cpu_tiny", *_overrides(corpus_dir, overrides), "--workdir", workdir]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("KERAS_NFNET_TRACEBACK", None)
    return env


def _run(corpus_dir, workdir, overrides=""):
    return subprocess.run([sys.executable] + _argv(corpus_dir, workdir, overrides), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)


# Runs the pretraining app's own entry point (trainers/pretrain.py: absl and config flags, cli.run, the job's main)
# once per case inside ONE subprocess, so TensorFlow is imported once for the whole table (about 10 s per process).
_DRIVER = r"""
import contextlib, io, json, os, sys
sys.path.insert(0, ".")


def _exit(status):  # cli.run ends the process hard after a user error; here each case returns instead
    raise SystemExit(status)


_hard_exit, os._exit = os._exit, _exit
sys.argv = ["trainers/pretrain.py"]
import trainers.pretrain as app
out = []
for argv in json.load(open(sys.argv_file)):
    sys.argv = argv
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            app.main()
            code = 0
        except SystemExit as exit:
            code = exit.code
    out.append({"returncode": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
with open(sys.argv_file + ".out", "w") as f:
    json.dump(out, f)
# As cli.run does after a user error: TensorFlow's input threads of a failed case can keep a normal interpreter
# exit waiting forever.
sys.stdout.flush()
_hard_exit(0)
"""


@pytest.fixture(scope="module")
def table(clean, tmp_path_factory):
    """case name -> (completed run as a dict, workdir, damaged corpus) for every case, through the app's entry."""
    base = tmp_path_factory.mktemp("table")
    argvs, places = [], {}
    for name, damage, overrides, _ in CASES:
        d, workdir = str(base / name / "corpus"), str(base / name / "run")
        shutil.copytree(clean, d)
        if damage is None:
            open(workdir, "w").close()
        else:
            damage(d)
        argvs.append(_argv(d, workdir, overrides))
        places[name] = (workdir, d)
    cases_file = str(base / "cases.json")
    json.dump(argvs, open(cases_file, "w"))
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.argv_file = {cases_file!r}\n" + _DRIVER],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = json.load(open(cases_file + ".out"))
    return {name: (run,) + places[name] for (name, *_), run in zip(CASES, runs)}


def _trusted(workdir):
    """What a later run in `workdir` would build on: its checkpoints and result."""
    if not os.path.isdir(workdir):
        return []
    found = [n for n in os.listdir(os.path.join(workdir, "checkpoints"))
             if n.startswith("ckpt-")] if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    return found + [n for n in os.listdir(workdir) if n == "result.json"]


OPEN_TIME = ("index_bad_offset", "index_entry_duplicated", "index_not_multiple_of_16", "shards_swapped",
             "shard_copied_over_another", "metadata_count_wrong", "shard_truncated", "id_table_missing",
             "crc_train_checksums", "crc_holdout_checksums", "metadata_sha256_wrong", "metadata_key_missing",
             "metadata_not_json")


def _check(name, run, workdir, corpus_dir, pattern):
    output = run["stdout"] + run["stderr"]
    errors = [line for line in run["stderr"].splitlines() if line.startswith("error: ")]
    assert run["returncode"] == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(errors) == 1, run["stderr"][-3000:]
    assert re.search(pattern, errors[0]), errors[0]
    if corpus_dir is None or name == "workdir_is_a_file":
        return
    trusted = _trusted(workdir)
    if "holdout" in name:  # the training data is intact: a checkpoint of it is sound, but no result is written
        assert "result.json" not in trusted
    else:
        assert trusted == [], trusted
    if name in OPEN_TIME:
        assert not os.path.exists(workdir), "a corpus that fails its open checks leaves no work directory"


def test_undamaged_corpus_trains(clean, tmp_path):
    """The negative control: the same corpus and command, undamaged, train to the end (a real app process)."""
    workdir = str(tmp_path / "run")
    proc = _run(clean, workdir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "done at step 1/1" in proc.stdout and "corpus checksums verified" in proc.stdout
    assert os.path.isfile(os.path.join(workdir, "result.json"))
    assert inspect_main([clean]) == 0


@pytest.mark.parametrize("name, pattern", [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_damage_fails_with_one_line_naming_the_place(table, name, pattern):
    run, workdir, corpus_dir = table[name]
    _check(name, run, workdir, corpus_dir, pattern)
    if name != "workdir_is_a_file":  # inspect_corpus reports the damage too, never with a traceback
        assert inspect_main([corpus_dir, "--deep"]) in (1, 2)


# A few kinds again as separate app processes: the exit status and output of a real process.
PROCESS_CASES = ("crc_train", "record_not_an_example", "index_entry_duplicated", "metadata_not_json",
                 "workdir_is_a_file")


@pytest.mark.parametrize("name", PROCESS_CASES)
def test_damage_in_a_separate_app_process(clean, tmp_path, name):
    _, damage, overrides, pattern = next(c for c in CASES if c[0] == name)
    d, workdir = str(tmp_path / "corpus"), str(tmp_path / "run")
    shutil.copytree(clean, d)
    if damage is None:
        open(workdir, "w").close()
    else:
        damage(d)
    proc = _run(d, workdir, overrides)
    _check(name, {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}, workdir, d, pattern)


# --- the skip policy and the other jobs ----------------------------------------------------------------------

def _damaged_for_skip(clean, d):
    """Three bad records of three kinds: a flipped byte (train), a label out of range (train), a record that is
    not an Example (held-out); the checksums in the metadata match, as if a faulty producer had written them."""
    shutil.copytree(clean, d)
    _flip_byte(d, "train", 0, 2)
    _refresh_checksums(d, "train", 0)
    _replace(d, "train", 1, 6, _example(d, "train", 1, 6, labels=[9]))
    _replace(d, "holdout", 0, 3, b"\x0a\xff\xff\xff\xff garbage")


WANT_SKIPPED = {"train": {"crc": 1, "label_out_of_range": 1}, "holdout": {"not_example": 1}}


def test_skip_policy_in_pretraining_reports_per_reason_in_log_tensorboard_and_result(clean, tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from keras_nfnet.jobs import config as config_lib
    from keras_nfnet.jobs.pretrain import pretrain

    d = str(tmp_path / "corpus")
    _damaged_for_skip(clean, d)
    config = config_lib.load("cpu_tiny", corpus=d, global_batch_size=TRAIN, epochs=2.0, peak_flops_per_device=1e11,
                             verbose=0, log_every_steps=1, on_bad_record="skip")
    workdir = str(tmp_path / "run")
    result = pretrain(config, workdir)
    assert result["status"] == "done" and result["bad_records"] == WANT_SKIPPED
    assert json.load(open(os.path.join(workdir, "result.json")))["bad_records"] == WANT_SKIPPED
    assert "skipped bad record (crc): split train shard train-00000.tfrecord record 2: payload checksum" in caplog.text
    assert ("skipped bad record (not_example): split holdout shard holdout-00000.tfrecord record 3: not a "
            "tf.train.Example") in caplog.text
    import tensorflow as tf

    events = EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={"tensors": 0}).Reload()
    for tag in ("bad_records/train/label_out_of_range", "bad_records/train/crc", "bad_records/holdout/not_example"):
        assert float(tf.make_ndarray(events.Tensors(tag)[-1].tensor_proto)) == 1, tag
    # the checkpoint carries the report, so a resumed run reports the whole run
    state = json.load(open(os.path.join(workdir, "checkpoints", "ckpt-000000002", "state.json")))
    assert len(state["bad_records"]["train"]["records"]) == 2


def test_fine_tuning_names_a_bad_record_and_skips_it_on_request(clean, tmp_path):
    from keras_nfnet.jobs import config as config_lib
    from keras_nfnet.jobs.finetune import finetune

    d = str(tmp_path / "corpus")
    _damaged_for_skip(clean, d)
    config = config_lib.load("finetune", corpus=d, variant="tiny", from_scratch=True, eval_split="holdout",
                             image_size=32, eval_image_size=32, epochs=1.0, warmup_epochs=0.0,
                             global_batch_size=TRAIN, sam_rho=0.0, ema=False, verbose=0)
    with pytest.raises(records.CorruptRecordError, match=r"bad record: split train shard train-0000[01].tfrecord "
                                                         r"record [26]: (payload checksum|label)"):
        finetune(config, str(tmp_path / "raise"))
    assert not os.path.exists(os.path.join(tmp_path, "raise", "result.json"))
    results = finetune(config_lib.override(config, {"on_bad_record": "skip"}), str(tmp_path / "skip"))
    assert results["bad_records"] == {"train": WANT_SKIPPED["train"], "eval": WANT_SKIPPED["holdout"]}
    assert results["metrics"]["eval_examples"] == HOLDOUT - 1


def test_a_sweep_run_on_a_bad_record_stops_the_sweep_with_its_one_line(clean, tmp_path):
    from keras_nfnet.scaling import sweep

    d = str(tmp_path / "corpus")
    _damaged_for_skip(clean, d)
    spec = sweep.SweepSpec(
        name="bad", pretrain_config="sweep_toy_pretrain",
        variants=["tiny"], epoch_budgets=[1.0], lr_grid=[0.4], initial_lr=0.4, lr_search="grid",
        shared={"corpus": d, "verbose": 0, "peak_flops_per_device": 1e11, "global_batch_size": 16}).validate()
    with pytest.raises(ValueError, match=r"^run tiny-e1-lr0.4: bad record: split train shard train-0000[01].tfrecord "
                                         r"record [26]: .* \(log: \S+train.log\)$"):
        sweep.run_sweep(spec, str(tmp_path / "sweep"), log=lambda s: None)
