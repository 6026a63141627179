"""Shared test set-up.

TensorFlow fixes its device list at first use, so the two logical CPU devices that the MirroredStrategy tests
need are configured here, once, before any test touches TensorFlow. Single-device tests are unaffected: the
default strategy places everything on the first device.
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

    import pytest

    from keras_nfnet import compat

    @pytest.fixture(autouse=True)
    def _fresh_collective_keys():
        """Every collective strategy starts from the same collective keys, and TensorFlow caches collective
        parameters per key for the whole process: two MirroredStrategies in one process whose all-reduces differ
        in shape then fail ("Shape mismatch in the collective instance"). Give each test its own key range, as
        TensorFlow's own test combinations do."""
        compat.advance_collective_keys()
        yield


import itertools  # noqa: E402

import pytest  # noqa: E402

from tests import gcs_emulator  # noqa: E402

_gcs_dirs = itertools.count()


@pytest.fixture(scope="session")
def gcs_server():
    """One GCS emulator for the whole session (see tests/gcs_emulator.py)."""
    with gcs_emulator.Emulator() as emulator:
        yield emulator


@pytest.fixture
def gcs_dir(gcs_server):
    """A fresh, empty `gs://` directory on the emulator, for one test."""
    return f"gs://{gcs_emulator.BUCKET}/t{os.getpid()}-{next(_gcs_dirs)}"


@pytest.fixture
def ram_dir(request):
    """A fresh `ram://` directory (TensorFlow's in-memory filesystem), removed after the test."""
    import tensorflow as tf

    path = f"ram://t{os.getpid()}-{next(_gcs_dirs)}"
    yield path
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


@pytest.fixture
def processes():
    """Subprocesses a test starts (append them); any still running at the end is killed, so a failing test
    leaves no training process behind."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
