"""Command-line apps report user errors as one line with exit status 2, never a traceback or absl's usage text."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("argv, message", [
    (["trainers/finetune.py", "--workdir=/tmp/unused", "--config.corpus=/no/such/corpus"], "corpus must be a corpus"),
    (["trainers/serve.py", "--model_base_path=/no/such/model"], "does not exist"),
    (["datasets/make_synthetic.py", "--out=/tmp/unused", "--num_images=-5"], "num_images must be a positive"),
    (["trainers/compare.py", "--config=compare_toy", "--config.models=('S0','resnet')", "--workdir=/tmp/unused"],
     "unknown model 'resnet'"),
    (["-m", "keras_nfnet.jobs.compare", "--config=compare_toy", "--config.sweeps=('/no/such/sweep',)",
      "--workdir=/tmp/unused"], "missing: ['/no/such/sweep']"),
    # absl's own errors: a missing required flag, an unknown flag, a bad value, a stray argument
    (["trainers/pretrain.py", "--config=cpu_tiny"], "Flag --workdir must have a value"),
    (["trainers/pretrain.py", "--workdir=/tmp/unused"], "Flag --config must have a value"),
    (["trainers/pretrain.py", "--workdir=/tmp/unused", "--config=cpu_tiny", "--no_such_flag=1"],
     "Unknown command line flag 'no_such_flag'"),
    (["trainers/finetune.py", "--workdir=/tmp/unused", "--config.epochs=many"], "flag --config.epochs=many"),
    # every bad override value at once, and an unknown field of a job whose config has a default
    (["trainers/finetune.py", "--workdir=/tmp/unused", "--config.epochs=many", "--config.sam_rho=no"],
     "could not convert string to float: 'many'; flag --config.sam_rho=no"),
    (["-m", "keras_nfnet.jobs.finetune", "--workdir=/tmp/unused", "--config.colour=red"],
     "unknown config field 'colour'"),
    (["trainers/pretrain.py", "--workdir=/tmp/unused", "--config=cpu_tiny", "stray"],
     "unexpected arguments ['stray']"),
    (["trainers/sweep.py", "--config=sweep_toy", "stray"], "unexpected arguments ['stray']"),
    (["trainers/export.py", "--base_dir=/tmp/unused"], "Flag --model_name must have a value"),
    # config_flags' errors: a config file that is not there, a field the config does not have
    (["-m", "keras_nfnet.jobs.pretrain", "--workdir=/tmp/unused", "--config=no/such/config.py"],
     "config file 'no/such/config.py' does not exist"),
    (["-m", "keras_nfnet.jobs.pretrain", "--workdir=/tmp/unused", "--config=cpu_tiny", "--config.colour=red"],
     "unknown config field 'colour'"),
    (["-m", "keras_nfnet.jobs.evaluate", "--workdir=/tmp/unused", "--config.corpus=/no/such/corpus"],
     "model is not set"),
    # a multi-line message (every problem of a config) still comes out as one line
    (["-m", "keras_nfnet.jobs.pretrain", "--workdir=/tmp/unused", "--config=cpu_tiny", "--config.variant=F99",
      "--config.epochs=0"], "bad pretraining config: unknown variant 'F99'"),
])
def test_user_error_is_one_line_and_status_2(argv, message):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_NFNET_TRACEBACK", None)
    proc = subprocess.run([sys.executable] + argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "USAGE" not in proc.stderr and "Try --helpfull" not in proc.stderr  # absl's usage text is not printed


@pytest.mark.parametrize("raised, message", [
    ("PermissionError('403 Forbidden: gs://bucket/corpus/metadata.json')", "403 Forbidden: gs://bucket/corpus"),
    ("__import__('gcsfs').retry.HttpError({'code': 401, 'message': 'Anonymous caller does not have access'})",
     "Anonymous caller does not have access"),
])
def test_a_refusing_bucket_is_one_line_and_status_2(raised, message):
    code = ("from keras_nfnet import cli\n"
            "def main(argv):\n"
            f"    raise {raised}\n"
            "cli.run(main)\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("KERAS_NFNET_TRACEBACK", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
