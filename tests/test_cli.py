"""Command-line apps report user errors as one line with exit status 2, never a traceback."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("argv, message", [
    (["trainers/finetune.py", "--workdir=/tmp/unused", "--corpus=/no/such/corpus"], "corpus must be a corpus"),
    (["trainers/serve.py", "--model_base_path=/no/such/model"], "does not exist"),
    (["datasets/make_synthetic.py", "--out=/tmp/unused", "--num_images=-5"], "num_images must be a positive"),
    (["trainers/compare.py", "--models=S0,resnet", "--pretrain_config=unused.py", "--workdir=/tmp/unused"],
     "unknown model 'resnet'"),
])
def test_user_error_is_one_line_and_status_2(argv, message):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_NFNET_TRACEBACK", None)
    proc = subprocess.run([sys.executable] + argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"error: " in proc.stderr and message in proc.stderr
