"""The command-line apps are quiet by default (no TensorFlow C++ start-up lines, no CUDA cuInit ERROR on a machine
without a GPU) and KERAS_NFNET_VERBOSE=1 brings TensorFlow's lines back."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_app(tmp_path, verbose):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_NFNET_VERBOSE")}
    env["PYTHONPATH"] = REPO
    if verbose:
        env["KERAS_NFNET_VERBOSE"] = "1"
    # A user error after TensorFlow is imported and has run an op (the digits are resized with TensorFlow).
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "x.txt").write_text("not empty")
    return subprocess.run([sys.executable, os.path.join(REPO, "datasets", "make_digits.py"),
                           f"--out={tmp_path / 'out'}", "--image_size=8"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))


def test_apps_are_quiet_by_default_and_verbose_on_request(tmp_path):
    quiet = _run_app(tmp_path, verbose=False)
    assert quiet.returncode == 2
    # Only the app's own one-line error: no "I ..."/"E ..." lines from TensorFlow's C++ logging (cuInit, oneDNN).
    assert quiet.stderr.strip().splitlines() == [f"error: {tmp_path / 'out'} exists and is not an empty directory; "
                                                 "choose a new or empty directory"], quiet.stderr
    loud = _run_app(tmp_path, verbose=True)
    assert loud.returncode == 2 and "tensorflow/core" in loud.stderr  # e.g. "oneDNN custom operations are on"
