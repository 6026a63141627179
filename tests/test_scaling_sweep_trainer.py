"""The sweep launches the real pretraining job: a short run is collected with the job's own numbers, and a run
whose learning rate makes it diverge is recorded as diverged (about a minute: two real runs)."""
import json
import math
import os

import pytest

from keras_nfnet.scaling import sweep
from keras_nfnet.scaling.results import ResultsStore

PRETRAIN_CONFIG = "sweep_toy_pretrain"


def test_real_trainer_run_and_divergence_are_collected(tmp_path):
    """One short real run through `python -m keras_nfnet.jobs.pretrain`, and one whose learning rate makes it
    diverge."""
    from keras_nfnet.data.synthetic import make_synthetic_corpus

    corpus = str(tmp_path / "corpus")
    make_synthetic_corpus(corpus, num_images=64, num_classes=4, image_size=32, num_holdout=32, seed=0,
                          multi_label=False)
    spec = sweep.SweepSpec(
        name="real", pretrain_config=PRETRAIN_CONFIG, variants=["tiny"], epoch_budgets=[0.5],
        lr_grid=[0.4, 1e6], initial_lr=0.4, lr_search="grid",
        shared={"corpus": corpus, "global_batch_size": 8, "agc_clip": 0.0, "verbose": 0}).validate()
    workdir = str(tmp_path / "w")
    plan = sweep.run_sweep(spec, workdir, log=lambda s: None)
    assert plan.complete
    rows = {r.run_id: r for r in ResultsStore(os.path.join(workdir, "runs.jsonl")).load()}
    ok, bad = rows["tiny-e0.5-lr0.4"], rows["tiny-e0.5-lr1e+06"]
    result = json.load(open(os.path.join(ok.run_dir, "result.json")))
    assert ok.ok and ok.heldout_loss == result["metrics"]["heldout_loss"] and ok.steps == 4 and math.isfinite(ok.heldout_loss)
    from keras_nfnet.flops import count_macs
    assert ok.flops == pytest.approx(6 * count_macs("tiny", 32, 4) * 4 * 8)
    assert bad.status == "diverged" and not bad.ok
