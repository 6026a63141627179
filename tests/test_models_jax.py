"""The layer and model tests again on the JAX backend, in a fresh process (the backend is fixed at import).

All of tests/test_layers.py runs; from tests/test_models.py the tests that exercise what differs between backends
(forward pass at several resolutions, feature extraction, training/inference modes, .keras round trips,
model.fit, mixed precision, variable layout, input errors). Left out: backend-independent Python (variant rows,
block schedules, initialiser statistics) and predict on a tf.data dataset.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELECTION = " or ".join([
    "forward_shapes", "feature_extraction", "inference_is", "custom_variant", "save_load", "fit_reduces",
    "mixed_bfloat16", "variable_layout", "unknown_variant", "too_small", "non_rgb", "bad_options",
])


def test_layers_and_models_on_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
           "tests/test_layers.py", "tests/test_models.py", "-k", f"not test_models.py or {SELECTION}"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and "skipped" not in result.stdout.split("passed")[0][-40:], tail
