"""Sweep planning, resumption and cluster collection, with a stand-in launcher that writes what the pretraining
job writes (config.json, result.json). tests/test_scaling_sweep_trainer.py launches the real job."""
import json
import math
import os

import pytest

from keras_nfnet.jobs import config as config_lib
from keras_nfnet.scaling import run_summary, sweep
from keras_nfnet.scaling.results import ResultsStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_CONFIG = "sweep_toy_pretrain"
GRID = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]


def _optimum(variant, epochs):
    # A known best LR per cell: constant at small budgets, falling with the budget (the paper's shape).
    return 0.8 if epochs <= 1 else 0.8 / epochs ** (1.0 if variant == "S1" else 0.5)


def _fake_loss(variant, epochs, lr):
    size = {"S0": 1.0, "S1": 2.0}[variant]
    return 2.0 + 1.0 / (size * epochs) ** 0.3 + 0.05 * (math.log2(lr) - math.log2(_optimum(variant, epochs))) ** 2


def _corpus(tmp_path):
    """A metadata-only corpus: what run_summary needs (class count) without writing images."""
    path = tmp_path / "corpus"
    path.mkdir(exist_ok=True)
    meta = {"schema_version": 1, "name": "fake", "description": "", "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "multi_label": False, "image_format": "jpeg",
            "record_format": "", "features": {},
            "splits": {s: {"num_examples": n, "shards": [], "label_frequencies": [0] * 10}
                       for s, n in (("train", 640), ("holdout", 64))}}
    (path / "metadata.json").write_text(json.dumps(meta))
    return str(path)


def _spec(tmp_path, **kw):
    fields = dict(name="t", pretrain_config=PRETRAIN_CONFIG, variants=["S0", "S1"], epoch_budgets=[0.5, 1, 2, 4],
                  lr_grid=GRID, initial_lr=0.4, shared={"corpus": _corpus(tmp_path)}, n_bootstrap=50)
    fields.update(kw)
    return sweep.SweepSpec(**fields).validate()


class FakeTrainer:
    """Writes a run directory the way the pretraining job does, with a loss from `_fake_loss`."""

    def __init__(self, fail_on=None):
        self.launched, self.fail_on = [], fail_on

    def __call__(self, run, spec):
        if run.run_id == self.fail_on:
            self.fail_on = None
            raise KeyboardInterrupt  # the sweep process is killed mid-run
        self.launched.append(run.run_id)
        cfg = sweep.run_config(spec, run.variant, run.epochs, run.learning_rate)
        os.makedirs(run.run_dir, exist_ok=True)
        with open(os.path.join(run.run_dir, "config.json"), "w") as f:
            json.dump(config_lib.as_dict(cfg), f)
        steps = math.ceil(run.epochs * 640 / cfg.global_batch_size)
        if run.learning_rate >= 3.2:  # the largest LR diverges, as the trainer would report with exit status 3
            run_summary.mark_diverged(run.run_dir, "error: training diverged")
            return
        with open(os.path.join(run.run_dir, "result.json"), "w") as f:
            json.dump({"job": "pretrain", "status": "done", "step": steps, "total_steps": steps,
                       "metrics": {"heldout_loss": _fake_loss(run.variant, run.epochs, run.learning_rate),
                                   "flops": 1e9 * steps, "device_hours": 1e-4 * steps}}, f)


def test_smart_sweep_finds_every_cells_grid_optimum_with_fewer_runs(tmp_path):
    spec = _spec(tmp_path)
    trainer = FakeTrainer()
    plan = sweep.run_sweep(spec, str(tmp_path / "w"), launcher=trainer, log=lambda s: None)
    assert plan.complete and len(plan.finished) == 8
    for (variant, epochs), best in plan.finished.items():
        grid_best = min(GRID[:-1], key=lambda lr: _fake_loss(variant, epochs, lr))
        assert best == grid_best, (variant, epochs)
    assert len(trainer.launched) < 0.6 * len(GRID) * 8
    rows = ResultsStore(str(tmp_path / "w" / "runs.jsonl")).load()
    assert len(rows) == len(set(trainer.launched))
    row = next(r for r in rows if r.run_id == "S1-e2-lr0.4")
    assert (row.variant, row.epochs, row.learning_rate, row.batch_size, row.image_size) == ("S1", 2.0, 0.4, 64, 32)
    from keras_nfnet.flops import count_macs, count_params
    assert row.params == count_params("S1", num_classes=10) and row.macs_per_image == count_macs("S1", 32, 10)
    assert row.steps == 20 and row.flops == 2e10

    # Re-running a complete sweep launches nothing.
    again = FakeTrainer()
    sweep.run_sweep(spec, str(tmp_path / "w"), launcher=again, log=lambda s: None)
    assert again.launched == []


def test_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path):
    spec, workdir = _spec(tmp_path, variants=["S0"]), str(tmp_path / "w")
    reference = FakeTrainer()
    sweep.run_sweep(spec, str(tmp_path / "ref"), launcher=reference, log=lambda s: None)

    first = FakeTrainer(fail_on=reference.launched[4])
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, workdir, launcher=first, log=lambda s: None)
    assert first.launched == reference.launched[:4]
    second = FakeTrainer()
    sweep.run_sweep(spec, workdir, launcher=second, log=lambda s: None)
    assert second.launched == reference.launched[4:]  # same runs, none twice

    # A run that finished but whose row was never written (killed in between) is collected, not re-run.
    store = ResultsStore(os.path.join(workdir, "runs.jsonl"))
    lines = open(store.path).read().splitlines()
    open(store.path, "w").write("\n".join(lines[:-1]) + "\n")
    third = FakeTrainer()
    sweep.run_sweep(spec, workdir, launcher=third, log=lambda s: None)
    assert third.launched == [] and len(store.load()) == len(lines)


def test_parallel_runs_overlap_and_reach_the_same_results(tmp_path):
    import threading
    import time

    spec = _spec(tmp_path, variants=["S0"], epoch_budgets=[0.5, 1])
    sequential = FakeTrainer()
    ref = sweep.run_sweep(spec, str(tmp_path / "seq"), launcher=sequential, log=lambda s: None)

    lock, running, peak = threading.Lock(), [0], [0]
    trainer = FakeTrainer()

    def overlapping(run, spec_):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        trainer(run, spec_)
        with lock:
            running[0] -= 1

    spec.parallel_runs = 2
    plan = sweep.run_sweep(spec, str(tmp_path / "par"), launcher=overlapping, log=lambda s: None)
    assert peak[0] == 2 and plan.complete and plan.finished == ref.finished
    assert sorted(trainer.launched) == sorted(sequential.launched)  # the same runs, none twice
    with pytest.raises(ValueError, match="parallel_runs"):
        _spec(tmp_path, parallel_runs=0)


def test_cluster_waves_with_collect_reach_the_same_results(tmp_path):
    spec = _spec(tmp_path, variants=["S0"], epoch_budgets=[0.5, 1])
    local = FakeTrainer()
    sweep.run_sweep(spec, str(tmp_path / "local"), launcher=local, log=lambda s: None)

    workdir, trainer, waves = str(tmp_path / "cluster"), FakeTrainer(), 0
    while True:
        plan = sweep.plan_sweep(spec, ResultsStore(os.path.join(workdir, "runs.jsonl")).load(), workdir)
        if not plan.ready:
            break
        for run in plan.ready:  # "independent jobs"
            cmd = run.command(spec)
            assert cmd[:3] == ["python", "-m", "keras_nfnet.jobs.pretrain"] and f"--workdir={run.run_dir}" in cmd
            assert cmd[3] == f"--config={config_lib.CONFIG_DIR}/sweep_toy_pretrain.py"
            assert f"--config.base_learning_rate={run.learning_rate!r}" in cmd
            job = run.job_command(["--config=s.py"], workdir)
            assert job[:4] == ["python", "-m", "keras_nfnet.jobs.sweep", "--config=s.py"]
            assert job[-2:] == ["--mode=run_one", f"--run_id={run.run_id}"]
            sweep.run_one(spec, workdir, run.run_id, launcher=trainer)
        with pytest.raises(ValueError, match="not runnable now"):
            sweep.run_one(spec, workdir, "S0-e1-lr0.1", launcher=trainer)
        assert sweep.collect(spec, workdir, log=lambda s: None) == len(plan.ready)
        waves += 1
    assert sorted(trainer.launched) == sorted(local.launched) and waves >= 2


def test_grid_mode_plans_every_learning_rate_at_once(tmp_path):
    spec = _spec(tmp_path, lr_search="grid")
    plan = sweep.plan_sweep(spec, [], str(tmp_path / "w"))
    assert len(plan.ready) == 2 * 4 * len(GRID) and not plan.waiting


def test_bad_sweeps_are_rejected_before_any_run(tmp_path):
    with pytest.raises(ValueError) as e:
        _spec(tmp_path, variants=["S0", "F99"], epoch_budgets=[1, 1], lr_grid=[0.4, 0.4], lr_search="random",
              shared={"variant": "S1", "max_steps": 5, "colour": 1}, pretrain_config="nope.py")
    msg = str(e.value)
    for needle in ("F99", "epoch_budgets repeat", "repeats 0.4", "lr_search must be one of", "colour",
                   "may not set ['variant']", "max_steps", "'nope.py' does not exist"):
        assert needle in msg, needle
    sweep_file = tmp_path / "s.py"
    sweep_file.write_text("def get_config():\n    return dict(name='x', speed=3)\n")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['speed'\]"):
        sweep.load_sweep(str(sweep_file))
    with pytest.raises(ValueError, match="does not exist"):
        sweep.load_sweep(str(tmp_path / "missing.py"))


def test_toy_sweep_file_loads_and_dry_run_prints_plan_and_cost(tmp_path):
    corpus = _corpus(tmp_path)
    spec = sweep.load_sweep("sweep_toy", **{"shared.corpus": corpus})
    assert spec.variants == ["tiny", "S0", "S1", "S2", "S3"] and spec.lr_search == "smart"
    assert spec.parallel_runs == 2 and spec.epoch_budgets[-1] / spec.epoch_budgets[0] >= 10 ** 1.5
    text = sweep.describe_plan(spec, str(tmp_path / "w"))
    assert "tiny-e0.125-lr0.2" in text and "waiting for the LR search of tiny at 0.125 epochs" in text
    # FLOPs of one run = 6 x MACs x images seen (an independent count: 5 steps of 64 images at 0.5 epochs of 640).
    from keras_nfnet.flops import count_macs
    assert f"{6 * count_macs('S0', 32, 10) * 5 * 64:.3g}" in text
    smoke = sweep.load_sweep("sweep_toy:smoke")
    assert smoke.name == "toy-smoke"
    vit = sweep.load_sweep("sweep_toy:vit", **{"shared.corpus": corpus})
    assert vit.variants == ["ViT-0", "ViT-1", "ViT-2", "ViT-3"]
    assert sweep.run_config(vit, "ViT-1", 2.0, 4e-3).optimizer == "adamw"


def test_fractional_budgets_round_trip_through_the_run_config(tmp_path):
    spec = _spec(tmp_path, variants=["S0"], epoch_budgets=[1 / 3, 2 / 3], lr_grid=[0.2, 0.4, 0.8])
    trainer = FakeTrainer()
    plan = sweep.run_sweep(spec, str(tmp_path / "w"), launcher=trainer, log=lambda s: None)
    assert plan.complete and len(trainer.launched) == 5  # 0.2, 0.4, 0.8; then 0.8 (best, top of grid) and 0.4
    rows = ResultsStore(str(tmp_path / "w" / "runs.jsonl")).load()
    assert {r.epochs for r in rows} == {1 / 3, 2 / 3}


def test_command_line_dry_run_and_errors(tmp_path):
    import subprocess
    import sys

    corpus = _corpus(tmp_path)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    base = [sys.executable, os.path.join(REPO, "trainers", "sweep.py"), "--workdir", str(tmp_path / "w")]
    plan = subprocess.run(base + ["--config=sweep_toy", f"--config.shared.corpus={corpus}", "--mode", "plan"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    assert "runs ready now (3):" in plan.stdout and "--workdir=" in plan.stdout
    assert f"--config.corpus={corpus}" in plan.stdout
    assert not (tmp_path / "w" / "runs").exists()  # a dry run trains nothing
    commands = subprocess.run(base + ["--config=sweep_toy", f"--config.shared.corpus={corpus}", "--mode=commands"],
                              env=env, capture_output=True, text=True, timeout=300)
    assert commands.returncode == 0, commands.stderr
    jobs = commands.stdout.strip().splitlines()
    assert len(jobs) == 3 and all(f"--config.shared.corpus={corpus}" in job and "--mode=run_one" in job
                                  for job in jobs)
    bad = subprocess.run(base + ["--config=sweep_toy", "--config.colour=red", "--mode", "plan"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error: unknown config field 'colour'" in bad.stderr
    assert "Traceback" not in bad.stderr
