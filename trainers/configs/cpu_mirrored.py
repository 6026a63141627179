"""cpu_tiny on two logical CPU devices (MirroredStrategy): the multi-replica path on a machine without GPUs."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location("cpu_tiny", os.path.join(os.path.dirname(__file__), "cpu_tiny.py"))
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)


def get_config(**overrides):
    return dict(_tiny.get_config(), strategy="mirrored", num_cpu_devices=2)
