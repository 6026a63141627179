"""The package as a user installs it: a wheel built from this checkout, installed alone into a fresh virtual
environment (its dependencies come from the running interpreter's site-packages through a .pth file), used from an
unrelated directory with no PYTHONPATH: keras_nfnet is imported from the fresh environment, and the console scripts
run a tiny pretraining, a fine-tuning from it and the smoke sweep (whose runs the sweep launches itself with
`python -m keras_nfnet.jobs.pretrain`)."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, cwd, env, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(bin directory, site-packages) of a fresh environment holding only the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the wheel is made of, so the checkout gets no build/ or egg-info.
    src = tmp / "src"
    shutil.copytree(os.path.join(ROOT, "keras_nfnet"), src / "keras_nfnet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp / "dist"), str(src)], cwd=str(tmp), env=env)
    (wheel,) = os.listdir(tmp / "dist")
    assert wheel.startswith("keras_nfnet-") and wheel.endswith(".whl")

    _run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], cwd=str(tmp), env=env)
    python = str(tmp / "venv" / "bin" / "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], str(tmp), env).strip()
    # The dependencies: the running interpreter's site-packages, after the fresh one (which holds the wheel).
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "_shared_dependencies.pth"), "w") as f:
        f.write("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q",
          str(tmp / "dist" / wheel)], cwd=str(tmp), env=env)
    return str(tmp / "venv" / "bin"), site


def test_installed_wheel_runs_the_jobs_from_another_directory(venv, tmp_path):
    bin_dir, site = venv
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_NFNET_TRACEBACK")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", PATH=bin_dir + os.pathsep + env["PATH"])
    python = os.path.join(bin_dir, "python")

    where = _run([python, "-c", "import keras_nfnet, keras_nfnet.jobs.config as c; print(keras_nfnet.__file__); "
                  "print(c.CONFIG_DIR); from keras_nfnet.data.synthetic import make_synthetic_corpus; "
                  "make_synthetic_corpus('corpus', num_images=128, num_classes=4, image_size=32, num_holdout=16, "
                  "seed=0, multi_label=False)"], str(work), env).split()[:2]
    assert all(path.startswith(site) for path in where), (where, site)
    assert not any(path.startswith(ROOT) for path in where)
    out = _run([os.path.join(bin_dir, "nfnet-pretrain"), "--config=cpu_tiny", "--config.corpus=corpus",
                "--config.epochs=0.5", "--config.peak_flops_per_device=1e11", "--config.verbose=0",
                "--workdir=pre"], str(work), env)
    assert "done at step 4/4" in out
    pre = json.load(open(work / "pre" / "result.json"))
    assert pre["job"] == "pretrain" and pre["step"] == 4

    _run([os.path.join(bin_dir, "nfnet-finetune"), "--config.source=pre", "--config.corpus=corpus",
          "--config.eval_split=holdout", "--config.image_size=32", "--config.epochs=0.5",
          "--config.global_batch_size=16", "--config.sam_rho=0", "--config.verbose=0", "--workdir=ft"],
         str(work), env)
    ft = json.load(open(work / "ft" / "result.json"))
    assert ft["job"] == "finetune" and ft["metrics"]["eval_examples"] == 16 and ft["metrics"]["variant"] == "tiny"

    _run([os.path.join(bin_dir, "nfnet-sweep"), "--config=sweep_toy:smoke", "--config.shared.corpus=corpus",
          "--config.n_bootstrap=20", "--workdir=sweep", "--mode=run"], str(work), env, timeout=600)
    sweep = json.load(open(work / "sweep" / "result.json"))
    assert sweep["job"] == "sweep" and sweep["metrics"]["runs"] == 4 and sweep["metrics"]["cells"] == 4
    rows = [json.loads(line) for line in open(work / "sweep" / "runs.jsonl")]
    assert sorted(r["run_id"] for r in rows) == ["S0-e0.25-lr0.4", "S0-e0.5-lr0.4", "tiny-e0.25-lr0.4",
                                                  "tiny-e0.5-lr0.4"]
    assert all(r["status"] == "finished" for r in rows)
    assert os.path.isfile(work / "sweep" / "analysis" / "report.txt")

    # The comparison job fine-tunes the sweep's best run of each model at one budget.
    _run([os.path.join(bin_dir, "nfnet-compare"), "--config=compare_toy", "--config.sweeps=('sweep',)",
          "--config.budgets=(0.5,)", "--config.finetune.corpus=corpus", "--config.finetune.eval_split=holdout",
          "--config.finetune.epochs=0.5", "--config.finetune.global_batch_size=16", "--workdir=cmp"], str(work), env)
    compared = json.load(open(work / "cmp" / "result.json"))["metrics"]["rows"]
    assert [(r["model"], r["epochs"]) for r in compared] == [("tiny", 0.5), ("S0", 0.5)]
