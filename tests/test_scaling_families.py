"""Smoke run of the NFNet-vs-ViT comparison: both families pretrained by the same trainer on the same tiny corpus
and budget, both fine-tuned on real digits, one table row each; ViT rows through the sweep's bookkeeping."""
import dataclasses
import importlib.util
import json
import math
import os

import keras
import pytest

from keras_nfnet import flops, vit_variants
from keras_nfnet.data.synthetic import make_synthetic_corpus
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.scaling import run_summary
from keras_nfnet.jobs.compare import compare
from keras_nfnet.scaling.families import compare_families, format_table
from keras_nfnet.scaling.results import ResultsStore
from keras_nfnet.scaling.sweep import SweepSpec
from keras_nfnet.vit import ViT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digits(path):
    spec = importlib.util.spec_from_file_location("make_digits", os.path.join(REPO, "datasets", "make_digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_digits_corpus(path, image_size=32)
    return path


def test_nfnet_and_vit_compared_by_the_same_jobs(tmp_path):
    corpus = str(tmp_path / "synth")
    make_synthetic_corpus(corpus, num_images=64, num_classes=10, image_size=32, num_holdout=16, seed=5)
    digits = _digits(str(tmp_path / "digits"))
    spec = config_lib.load("cpu_tiny", corpus=corpus, epochs=1.0, checkpoint_every_steps=4, eval_every_steps=4,
                           verbose=0, peak_flops_per_device=1e9)
    ft = config_lib.load("finetune", corpus=digits, epochs=0.25, global_batch_size=32, image_size=32,
                         eval_image_size=32, sam_rho=0.0, warmup_epochs=0.0, verbose=0)
    workdir = str(tmp_path / "compare")
    lines = []
    rows = compare_families(["tiny", "vit-tiny"], spec, ft, workdir, log=lines.append)

    assert [(r["family"], r["model"]) for r in rows] == [("nfnet", "tiny"), ("vit", "vit-tiny")]
    images = 4 * 16  # ceil(1 epoch x 64 images / batch 16) steps of 16
    macs = {"tiny": flops.count_macs("tiny", 32, num_classes=10),
            "vit-tiny": vit_variants.count_macs("vit-tiny", 32, num_classes=10)}
    for r in rows:
        assert r["pretrain_steps"] == 4
        assert r["macs_per_image"] == macs[r["model"]]
        assert math.isclose(r["pretrain_flops"], 6 * macs[r["model"]] * images, rel_tol=1e-9)
        assert math.isfinite(r["heldout_loss"]) and r["pretrain_device_hours"] > 0
        assert 0.0 <= r["finetune_top1"] <= 1.0
        with open(os.path.join(workdir, "finetune", r["model"], "result.json")) as f:
            summary = json.load(f)["metrics"]
        assert summary["source"] == os.path.join(workdir, "pretrain", r["model"])
        assert summary["eval_examples"] == 450  # the digits test split: every image evaluated once
        assert summary["train_images_seen"] == round(0.25 * 1347 / 32) * 32
    vit = keras.saving.load_model(os.path.join(workdir, "finetune", "vit-tiny", "model.keras"))
    assert isinstance(vit, ViT) and vit.num_classes == 10
    table = format_table(rows)
    assert table.count("\n") == 3 and "| vit | vit-tiny |" in table and len(lines) == 2
    with open(os.path.join(workdir, "comparison.json")) as f:
        assert json.load(f) == rows

    # A second call finds both results and trains nothing.
    stamp = os.path.getmtime(os.path.join(workdir, "finetune", "vit-tiny", "model.keras"))
    assert compare_families(["tiny", "vit-tiny"], spec, ft, workdir, log=lines.append) == rows
    assert os.path.getmtime(os.path.join(workdir, "finetune", "vit-tiny", "model.keras")) == stamp

    # The sweep's bookkeeping reads a ViT run with the ViT's own counts.
    row = run_summary.read_run_dir(os.path.join(workdir, "pretrain", "vit-tiny"))
    assert row.variant == "vit-tiny" and row.params == vit_variants.count_params("vit-tiny", 10)
    assert row.macs_per_image == macs["vit-tiny"] and row.flops == rows[1]["pretrain_flops"]

    # The comparison job over finished sweeps: one sweep per family; a worse-LR run of tiny must not be chosen.
    # Same workdir and labels: the fine-tunes above are found and kept, so the rows must be the same ones.
    sweeps = []
    for model in ("tiny", "vit-tiny"):
        store = ResultsStore(str(tmp_path / f"sweep-{model}" / "runs.jsonl"))
        best = run_summary.read_run_dir(os.path.join(workdir, "pretrain", model), run_id=model)
        store.append(best)
        store.append(dataclasses.replace(best, run_id=f"{model}-worse", heldout_loss=best.heldout_loss + 1,
                                         run_dir="/elsewhere"))
        sweeps.append(os.path.dirname(store.path))
    job = config_lib.override(config_lib.load("compare_toy", sweeps=tuple(sweeps), budgets=(1.0,)), {"finetune": ft})
    result = compare(job, workdir, log=lines.append)
    assert [{k: r[k] for k in rows[0]} for r in result["metrics"]["rows"]] == rows
    assert os.path.getsize(result["metrics"]["figure"]) > 10_000
    with pytest.raises(ValueError, match="no finished run at 4 epochs"):
        compare(config_lib.override(job, {"budgets": (4.0,)}), str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"finetune: unknown config field\(s\) \['colour'\]"):
        bad = job.copy_and_resolve_references()
        with bad.finetune.unlocked():
            bad.finetune.colour = 1
        compare(bad, str(tmp_path / "bad"))


def test_sweep_and_comparison_accept_vit_names_and_reject_unknown(tmp_path):
    SweepSpec(name="mixed", pretrain_config="sweep_toy_pretrain", variants=["S0", "ViT-0"],
              epoch_budgets=[1.0], lr_grid=[0.1, 0.2], initial_lr=0.1).validate()
    with pytest.raises(ValueError, match="ViT-9"):
        SweepSpec(name="bad", pretrain_config="sweep_toy_pretrain", variants=["ViT-9"],
                  epoch_budgets=[1.0], lr_grid=[0.1, 0.2], initial_lr=0.1).validate()
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        compare_families(["S0", "resnet"], config_lib.load("cpu_tiny"), config_lib.load("finetune"), str(tmp_path))
