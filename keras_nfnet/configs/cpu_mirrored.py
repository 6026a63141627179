"""cpu_tiny on two logical CPU devices (MirroredStrategy): the multi-replica path on a machine without GPUs."""
from keras_nfnet.configs import cpu_tiny


def get_config(arg=None):
    c = cpu_tiny.get_config()
    c.strategy = "mirrored"
    c.num_cpu_devices = 2
    return c
