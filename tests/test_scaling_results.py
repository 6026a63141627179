"""The results store: JSON-lines round trip, newest row wins, interrupted appends, CSV."""
import json

import pytest

from keras_nfnet.scaling.results import FIELDS, ResultsStore, RunResult, read_csv


def _row(run_id="S0-e1-lr0.4", loss=2.5, **kw):
    base = dict(run_id=run_id, variant="S0", params=12345, macs_per_image=67890, epochs=1.0, learning_rate=0.4,
                steps=100, batch_size=32, heldout_loss=loss, flops=4.1e12, device_hours=0.01)
    base.update(kw)
    return RunResult(**base)


def test_round_trip_and_newest_row_wins(tmp_path):
    store = ResultsStore(str(tmp_path / "sub" / "results.jsonl"))
    assert store.load() == []
    store.append(_row(loss=3.0))
    store.append(_row("S0-e2-lr0.4", epochs=2.0, loss=2.2, finetune_accuracy=0.5))
    store.append(_row(loss=2.9))  # a re-run of the first
    rows = store.load()
    assert [r.run_id for r in rows] == ["S0-e2-lr0.4", "S0-e1-lr0.4"]
    assert rows[1].heldout_loss == 2.9 and rows[0].finetune_accuracy == 0.5
    # Each line is plain JSON with every field.
    lines = (tmp_path / "sub" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and set(json.loads(lines[0])) == set(FIELDS)


def test_interrupted_last_line_is_ignored_but_corruption_elsewhere_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultsStore(str(path))
    store.append(_row())
    with open(path, "a") as f:
        f.write('{"run_id": "S0-e2-lr0.4", "vari')  # killed mid-write
    assert [r.run_id for r in store.load()] == ["S0-e1-lr0.4"]
    with open(path, "a") as f:
        f.write("\n")
    store.append(_row("S1-e1-lr0.4"))
    with pytest.raises(ValueError, match=r"r.jsonl:2 is not valid JSON"):
        store.load()


def test_diverged_run_is_stored_as_null_and_not_ok(tmp_path):
    store = ResultsStore(str(tmp_path / "r.jsonl"))
    store.append(_row(loss=float("nan"), status="diverged"))
    assert "NaN" not in (tmp_path / "r.jsonl").read_text()
    (r,) = store.load()
    assert r.heldout_loss is None and not r.ok
    assert _row().ok and not _row(loss=float("inf")).ok


def test_csv_round_trip(tmp_path):
    store = ResultsStore(str(tmp_path / "r.jsonl"))
    rows = [_row(), _row("S1-e0.5-lr0.8", variant="S1", epochs=0.5, learning_rate=0.8, heldout_accuracy=0.25)]
    for r in rows:
        store.append(r)
    store.to_csv(str(tmp_path / "r.csv"))
    back = read_csv(str(tmp_path / "r.csv"))
    assert back == rows
    assert (tmp_path / "r.csv").read_text().splitlines()[0].split(",") == FIELDS


def test_bad_rows_are_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="learning_rate"):
        _row(learning_rate=0)
    with pytest.raises(ValueError, match="status"):
        _row(status="crashed")
    with pytest.raises(ValueError, match=r"lacks required field\(s\) \['flops'"):
        RunResult.from_dict({k: v for k, v in _row().to_dict().items() if k not in ("flops", "device_hours")})


def test_update_adds_a_newer_row_for_finetune_accuracy(tmp_path):
    store = ResultsStore(str(tmp_path / "r.jsonl"))
    store.append(_row())
    store.update("S0-e1-lr0.4", finetune_accuracy=0.75)
    (r,) = store.load()
    assert r.finetune_accuracy == 0.75 and r.heldout_loss == 2.5
    with pytest.raises(ValueError, match="no run 'S9'"):
        store.update("S9", finetune_accuracy=0.1)
    with pytest.raises(ValueError, match=r"cannot set \['colour'\]"):
        store.update("S0-e1-lr0.4", colour=1)
