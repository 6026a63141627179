"""The converter and preset tests again on the JAX backend, in a fresh process (the backend is fixed at import):
timm parity in both numerics, backbone feature maps, classifier save/load, presets, and the image converter
against TensorFlow's evaluation view. Left out: SavedModel export, the command-line app and fine-tuning
(TensorFlow-only paths), and checks of layout logic that does not depend on the backend."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The paths where backends differ (compiled predict, dict outputs, saving, resize); the layout logic they share
# with the TensorFlow run is not repeated.
SELECTION = " or ".join(["(timm_checkpoint and pth)", "backbone_feature_maps", "save_load", "preset_round_trip",
                         "image_converter"])


def test_converters_and_presets_on_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
           "tests/test_converters.py", "tests/test_presets.py", "-k", SELECTION]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and "skipped" not in result.stdout.split("passed")[0][-40:], tail
    assert "7 passed" in result.stdout, tail  # every selected test ran
