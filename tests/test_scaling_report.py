"""The analysis step writes the table, the fitted numbers, the report and the figures (PNG and TensorBoard)."""
import json
import os

import numpy as np
import pytest

from keras_nfnet.scaling import report
from keras_nfnet.scaling.results import read_csv
from test_scaling_fit import ALPHA, BETA, _chinchilla_runs, _run


def test_analyze_writes_every_artifact_with_the_fitted_numbers(tmp_path):
    runs = _chinchilla_runs()
    runs.append(_run("m100000", 1e5, 0.0625, 3.2, float("nan"), 3.75e10, status="diverged"))
    out_dir, tb = str(tmp_path / "analysis"), str(tmp_path / "tb")
    out = report.analyze(runs, out_dir, n_bootstrap=100, tensorboard_dir=tb)

    for name in ("results.csv", "fits.json", "report.txt", "loss_vs_compute.png", "loss_vs_lr.png", "best_lr.png",
                 "optimal_allocation.png"):
        path = os.path.join(out_dir, name)
        assert os.path.getsize(path) > 0, name
    with open(os.path.join(out_dir, "loss_vs_compute.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(read_csv(os.path.join(out_dir, "results.csv"))) == len(runs)

    fits = json.loads(open(os.path.join(out_dir, "fits.json")).read(), parse_constant=lambda c: 1 / 0)  # strict JSON
    assert fits["n_diverged"] == 1 and fits["skipped"] == {}
    assert abs(fits["allocation"]["size"]["exponent"] - BETA / (ALPHA + BETA)) < 0.05
    assert abs(fits["loss_frontier"]["exponent"] + ALPHA * BETA / (ALPHA + BETA)) < 0.01
    # Every model's best LR is 0.8 in this synthetic sweep: shared at small budgets, not falling.
    assert fits["findings"]["best_lr_shared_at_small_budget"][0] == "yes"
    assert fits["findings"]["optimal_size_grows"][0] == "yes"
    assert fits["findings"]["optimal_epochs_grow"][0] == "yes"
    lo, hi = fits["allocation"]["size_share_ci"]  # the law's share beta / (alpha + beta) = 0.45
    assert lo < BETA / (ALPHA + BETA) < hi
    assert fits["findings"]["size_and_epochs_grow_alike"][0] == ("yes" if lo <= 0.5 <= hi else "no")

    text = open(os.path.join(out_dir, "report.txt")).read()
    assert f"{fits['loss_frontier']['exponent']:.4f}" in text
    assert "1 diverged" in text

    # The figures are in TensorBoard as image summaries, one tag per PNG.
    import tensorflow as tf

    tags = set()
    for event_file in os.listdir(tb):
        for e in tf.compat.v1.train.summary_iterator(os.path.join(tb, event_file)):
            tags.update(v.tag for v in e.summary.value)
    assert {"loss_vs_compute", "loss_vs_lr", "best_lr", "optimal_allocation"} <= tags


def test_partial_sweep_is_analysed_with_skipped_fits_named(tmp_path):
    runs = [_run("S0", 1e5, 0.5, lr, 2.0 + 0.1 * np.log2(lr / 0.8) ** 2, 1e12) for lr in (0.4, 0.8, 1.6)]
    runs[1].finetune_accuracy = 0.625
    out = report.analyze(runs, str(tmp_path), n_bootstrap=10)
    assert "S0-e0.5-lr0.8            compute 1e+12  accuracy 0.6250" in open(tmp_path / "report.txt").read()
    assert "loss_frontier" in out["skipped"] and "allocation" in out["skipped"]
    assert "Skipped loss_frontier" in open(tmp_path / "report.txt").read()
    assert out["cells"][0]["best_lr"] == 0.8


def test_findings_are_not_resolved_where_the_search_did_not_bracket_the_best_lr(tmp_path):
    # One LR per cell: nothing can be said about the best LR, and 2-3 frontier points cannot show straightness.
    # S1 at 0.25 epochs is worse than the cheaper S0 at 0.5 epochs: 3 frontier cells.
    runs = [_run(v, p, e, 0.4, 3.0 / (p * e) ** 0.05 + (0.3 if (v, e) == ("S1", 0.25) else 0), 1e6 * p * e)
            for v, p in (("S0", 2e4), ("S1", 7e4)) for e in (0.25, 0.5)]
    findings = report.analyze(runs, str(tmp_path), n_bootstrap=20)["findings"]
    assert findings["best_lr_shared_at_small_budget"][0] == "not resolved"
    assert findings["best_lr_falls_with_budget"][0] == "not resolved"
    assert findings["loglog_linear_frontier"][0] == "not resolved"


def test_best_lr_findings_follow_a_known_falling_optimum(tmp_path):
    # lr*(e) = 0.8 e^-0.5 for both models: shared at the smallest budget and falling.
    runs = []
    for v, p in (("S0", 2e4), ("S1", 7e4)):
        for e in (0.5, 1, 2, 4, 8):
            for lr in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2):
                loss = 2.0 / (p * e) ** 0.05 + 0.05 * (np.log2(lr) - np.log2(0.8 * e ** -0.5)) ** 2
                runs.append(_run(v, p, e, lr, loss, 1e6 * p * e))
    out = report.analyze(runs, str(tmp_path), n_bootstrap=100)
    assert out["findings"]["best_lr_shared_at_small_budget"][0] == "yes"
    assert out["findings"]["best_lr_falls_with_budget"][0] == "yes"
    assert out["best_lr"]["S1"]["fit"]["exponent"] == pytest.approx(-0.5, abs=0.02)
