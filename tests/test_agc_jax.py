"""The numerical AGC / optimizer / saving tests again, on the JAX backend, in a subprocess.

The backend is fixed when Keras is imported, so JAX runs need their own process (KERAS_BACKEND=jax). The
selected tests are the backend-agnostic ones: AGC against numpy for every kernel kind, five AGC + Nesterov +
coupled-decay steps on a tiny NFNet against numpy, model.fit (stateless_apply on JAX) against apply(), and the
save/load round trips. JAX has no replica context: gradients are global arrays, so no cross-replica sum is needed.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_numerical_tests_pass_on_jax():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    selection = "numpy or round_trip or fit_matches or warmup or ema or loss"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection,
         "tests/test_agc.py", "tests/test_optimizers.py", "tests/test_agc_saving.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "passed" in output and "skipped" not in output.split("passed")[-1], output[-2000:]
