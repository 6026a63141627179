"""keras_nfnet.storage: every function against a local directory, a GCS emulator over HTTP on 127.0.0.1 (gcsfs)
and TensorFlow's ram:// filesystem (tf.io.gfile). Expected values come from Python itself (bytes slicing, the
names written), and objects written to the emulator are read back over its HTTP API without gcsfs."""
import json
import os
import urllib.parse
import urllib.request

import pytest

from keras_nfnet import storage
from tests import gcs_emulator


@pytest.fixture(params=["local", "gcs", "ram"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs_dir" if request.param == "gcs" else "ram_dir")


def _emulator_object(server, path):
    """Bytes of gs://BUCKET/<name> fetched with a plain HTTP GET of GCS's JSON API (no gcsfs involved)."""
    name = path.split(f"gs://{gcs_emulator.BUCKET}/", 1)[1]
    url = f"{server.host}/storage/v1/b/{gcs_emulator.BUCKET}/o/{urllib.parse.quote(name, safe='')}?alt=media"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_paths():
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("relative/dir")
    assert storage.is_remote("gs://b/x") and storage.is_remote("ram://x") and storage.is_remote("memory://x")
    assert storage.join("gs://b/run", "ckpt", "a.h5") == "gs://b/run/ckpt/a.h5"
    assert storage.join("/tmp", "a") == os.path.join("/tmp", "a")
    assert storage.basename("gs://b/run/") == "run" and storage.dirname("gs://b/run/x") == "gs://b/run"


def test_files_and_directories(root):
    storage.makedirs(storage.join(root, "sub", "deeper"))
    storage.write_bytes(storage.join(root, "a.bin"), b"\x00\x01binary")
    storage.write_text(storage.join(root, "b.json"), '{"k": "välue"}')
    with storage.open(storage.join(root, "sub", "deeper", "c.txt"), "w") as f:
        f.write("line1\n")
        f.write("line2\n")
    with storage.open(storage.join(root, "sub", "d.tfrecord"), "wb") as f:
        f.write(b"xyz")

    assert storage.read_bytes(storage.join(root, "a.bin")) == b"\x00\x01binary"
    assert json.loads(storage.read_text(storage.join(root, "b.json"))) == {"k": "välue"}
    with storage.open(storage.join(root, "sub", "deeper", "c.txt"), "r") as f:
        assert f.read().splitlines() == ["line1", "line2"]
    with storage.open(storage.join(root, "sub", "d.tfrecord"), "rb") as f:
        assert f.read() == b"xyz"
    assert storage.size(storage.join(root, "a.bin")) == 8

    assert storage.exists(root) and storage.isdir(root)
    assert storage.exists(storage.join(root, "a.bin")) and not storage.isdir(storage.join(root, "a.bin"))
    assert storage.isdir(storage.join(root, "sub"))
    assert not storage.exists(storage.join(root, "missing")) and not storage.isdir(storage.join(root, "missing"))
    assert storage.listdir(root) == ["a.bin", "b.json", "sub"]
    assert storage.listdir(storage.join(root, "sub")) == ["d.tfrecord", "deeper"]
    with pytest.raises(FileNotFoundError):
        storage.listdir(storage.join(root, "missing"))
    assert storage.glob(storage.join(root, "*.bin")) == [storage.join(root, "a.bin")]
    assert storage.glob(storage.join(root, "sub", "*.tfrecord")) == [storage.join(root, "sub", "d.tfrecord")]
    assert storage.glob(storage.join(root, "*.none")) == []

    storage.remove(storage.join(root, "a.bin"))
    assert not storage.exists(storage.join(root, "a.bin"))
    storage.rmtree(storage.join(root, "sub"))
    assert not storage.exists(storage.join(root, "sub", "d.tfrecord")) and storage.listdir(root) == ["b.json"]
    storage.rmtree(storage.join(root, "never-there"))  # no error
    with pytest.raises(ValueError, match="modes"):
        storage.open(storage.join(root, "b.json"), "a")


def test_write_atomic_replaces_whole_file(root):
    storage.makedirs(root)
    path = storage.join(root, "state.json")
    storage.write_atomic(path, "first version")
    storage.write_atomic(path, b"second")
    assert storage.read_bytes(path) == b"second"
    assert storage.listdir(root) == ["state.json"]  # no temporary left behind


def test_read_ranges_match_slices(root):
    storage.makedirs(root)
    data = bytes(range(256)) * 300
    path = storage.join(root, "shard.bin")
    storage.write_bytes(path, data)
    ranges = [(0, 16), (70_000, 1000), (5, 0), (76_700, 100), (123, 4567), (0, 16)]
    assert storage.read_ranges(path, ranges) == [data[o:o + n] for o, n in ranges]
    assert storage.read_ranges(path, []) == []


def test_staged_dir_uploads_on_sync_and_exit(root):
    stage = storage.staged_dir(storage.join(root, "logs"))
    with stage as local:
        assert not storage.is_remote(local) and os.path.isdir(local)
        with open(os.path.join(local, "events.1"), "wb") as f:
            f.write(b"A")
        stage.sync()
        assert storage.read_bytes(storage.join(root, "logs", "events.1")) == b"A"
        with open(os.path.join(local, "events.1"), "ab") as f:
            f.write(b"B")
        os.makedirs(os.path.join(local, "train"))
        with open(os.path.join(local, "train", "events.2"), "wb") as f:
            f.write(b"C")
    assert storage.read_bytes(storage.join(root, "logs", "events.1")) == b"AB"
    assert storage.read_bytes(storage.join(root, "logs", "train", "events.2")) == b"C"
    if storage.is_remote(root):
        assert not os.path.exists(local)  # the temporary copy is gone

    with pytest.raises(RuntimeError):
        with storage.staged_dir(storage.join(root, "failed")) as local:
            with open(os.path.join(local, "half"), "wb") as f:
                f.write(b"x")
            raise RuntimeError("writer failed")
    if storage.is_remote(root):
        assert not storage.exists(storage.join(root, "failed", "half"))


def test_fetch_dir_copies_tree(root):
    storage.write_bytes(storage.join(root, "model", "saved_model.pb"), b"pb")
    storage.write_bytes(storage.join(root, "model", "variables", "variables.index"), b"idx")
    local = storage.fetch_dir(storage.join(root, "model"))
    assert not storage.is_remote(local)
    with open(os.path.join(local, "saved_model.pb"), "rb") as f:
        assert f.read() == b"pb"
    with open(os.path.join(local, "variables", "variables.index"), "rb") as f:
        assert f.read() == b"idx"
    with pytest.raises(FileNotFoundError):
        storage.fetch_dir(storage.join(root, "absent"))


def test_gcs_objects_are_on_the_emulator(gcs_server, gcs_dir):
    """What storage writes to gs:// is an object on the HTTP server, readable by a plain GET."""
    storage.write_atomic(storage.join(gcs_dir, "x", "marker.json"), '{"ok": 1}')
    assert _emulator_object(gcs_server, storage.join(gcs_dir, "x", "marker.json")) == b'{"ok": 1}'


def test_sweep_results_table_on_a_bucket(gcs_dir):
    """The sweep's JSON-lines table and CSV in a bucket (no append there: each append rewrites the object)."""
    from keras_nfnet.scaling.results import FIELDS, ResultsStore, RunResult, read_csv

    def row(run_id, loss):
        return RunResult(run_id=run_id, variant="S0", params=1, macs_per_image=2, epochs=1.0, learning_rate=0.4,
                         steps=10, batch_size=8, heldout_loss=loss, flops=1e9, device_hours=0.01)

    store = ResultsStore(storage.join(gcs_dir, "sweep", "results.jsonl"))
    assert store.load() == []
    for run_id, loss in (("a", 3.0), ("b", 2.0), ("a", 2.5)):
        store.append(row(run_id, loss))
    lines = storage.read_text(store.path).splitlines()
    assert len(lines) == 3 and [json.loads(line)["heldout_loss"] for line in lines] == [3.0, 2.0, 2.5]
    assert [(r.run_id, r.heldout_loss) for r in store.load()] == [("b", 2.0), ("a", 2.5)]
    store.to_csv(storage.join(gcs_dir, "sweep", "results.csv"))
    assert storage.read_text(storage.join(gcs_dir, "sweep", "results.csv")).splitlines()[0] == ",".join(FIELDS)
    assert [(r.run_id, r.heldout_loss) for r in read_csv(storage.join(gcs_dir, "sweep", "results.csv"))] == [
        ("b", 2.0), ("a", 2.5)]


def test_sweep_with_its_workdir_on_a_bucket_matches_a_local_sweep(gcs_dir, tmp_path):
    """The sweep driver with runs, results and summaries in a bucket: the same runs and rows as on a local disk."""
    import dataclasses

    from keras_nfnet.scaling import sweep
    from keras_nfnet.scaling.results import ResultsStore
    from tests.test_scaling_sweep import FakeTrainer, _spec

    class UploadingTrainer(FakeTrainer):  # writes a run locally as the stand-in trainer does, then uploads it
        def __call__(self, run, spec):
            local = dataclasses.replace(run, run_dir=str(tmp_path / "staging" / run.run_id))
            super().__call__(local, spec)
            for name in os.listdir(local.run_dir):
                with open(os.path.join(local.run_dir, name), "rb") as f:
                    storage.write_bytes(storage.join(run.run_dir, name), f.read())

    spec = _spec(tmp_path, variants=["S0"], epoch_budgets=[0.5, 2])
    on_disk, on_bucket = FakeTrainer(), UploadingTrainer()
    sweep.run_sweep(spec, str(tmp_path / "local"), launcher=on_disk, log=lambda s: None)
    plan = sweep.run_sweep(spec, storage.join(gcs_dir, "sweep"), launcher=on_bucket, log=lambda s: None)
    assert plan.complete and on_bucket.launched == on_disk.launched
    want = ResultsStore(str(tmp_path / "local" / sweep.RESULTS_FILE)).load()
    got = ResultsStore(storage.join(gcs_dir, "sweep", sweep.RESULTS_FILE)).load()
    assert [dataclasses.replace(r, run_dir="") for r in got] == [dataclasses.replace(r, run_dir="") for r in want]
    assert all(r.run_dir == storage.join(gcs_dir, "sweep", "runs", r.run_id) for r in got)
    for r in got:
        assert storage.exists(storage.join(r.run_dir, "diverged.json" if r.status == "diverged" else "result.json"))

    # The analysis written into the bucket holds what a local analysis of the same rows holds.
    from keras_nfnet.scaling import report

    local_out, remote_out = str(tmp_path / "analysis"), storage.join(gcs_dir, "sweep", "analysis")
    report.analyze(want, local_out, n_bootstrap=10)
    report.analyze(got, remote_out, n_bootstrap=10, tensorboard_dir=storage.join(remote_out, "tensorboard"))
    assert sorted(storage.listdir(remote_out)) == sorted(os.listdir(local_out) + ["tensorboard"])
    with open(os.path.join(local_out, "fits.json")) as f:
        assert json.loads(storage.read_text(storage.join(remote_out, "fits.json"))) == json.load(f)
    assert any("tfevents" in n for n in storage.listdir(storage.join(remote_out, "tensorboard")))
