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
