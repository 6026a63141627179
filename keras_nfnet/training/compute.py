"""The compute clock: analytic training FLOPs, accumulated FLOPs and device-hours that survive restarts, images/s,
and model FLOPs utilisation (MFU).

Training FLOPs per image = 3 x forward FLOPs (backward ~ 2 x forward) = 6 x forward multiply-accumulates, the
convention of NFNET_SPEC.md section 5, from `keras_nfnet.flops.count_macs`. Device-hours count wall time x
devices (replicas), the x-axis of a loss-vs-compute plot (the paper's TPU-v4 core-hours).
"""
import time

import numpy as np

from keras_nfnet import architectures, flops, vit_variants


def train_flops_per_image(variant_or_model, image_size, num_classes=1000):
    """Analytic training FLOPs for one image: 3 passes x 2 FLOPs per multiply-accumulate. Takes an NFNet or a ViT
    (name, row or model)."""
    family = architectures.family(getattr(variant_or_model, "variant", variant_or_model))
    counter = flops if family == "nfnet" else vit_variants
    return 6.0 * counter.count_macs(variant_or_model, image_size, num_classes=num_classes)


def measure_peak_flops(seconds=1.0, size=1024, dtype="float32"):
    """Measured matmul FLOP/s of one device (this process's default device): a stand-in for the data-sheet peak.

    A square matmul is the best case for any accelerator, so MFU against it is a fair upper-bound comparison.
    """
    import tensorflow as tf

    a = tf.random.stateless_normal((size, size), seed=(1, 2), dtype=dtype)
    b = tf.random.stateless_normal((size, size), seed=(3, 4), dtype=dtype)
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    matmul(a, b).numpy()  # trace + warm up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        matmul(a, b).numpy()
        n += 1
    return 2.0 * size ** 3 * n / (time.perf_counter() - start)


class ComputeClock:
    """Accumulates images, FLOPs and device-seconds over a run, across restarts (`state()` / `load_state()`).

    Args:
      flops_per_image: analytic training FLOPs per image (`train_flops_per_image`).
      num_devices: replicas working in parallel (all hosts).
      peak_flops_per_device: FLOP/s of one device, for MFU (None: MFU is not reported).
    """

    def __init__(self, flops_per_image, num_devices, peak_flops_per_device=None):
        if flops_per_image <= 0 or num_devices < 1:
            raise ValueError(f"flops_per_image must be > 0 and num_devices >= 1; got {flops_per_image}, "
                             f"{num_devices}.")
        self.flops_per_image = float(flops_per_image)
        self.num_devices = int(num_devices)
        self.peak_flops_per_device = peak_flops_per_device
        self.images = 0
        self.flops = 0.0
        self.device_seconds = 0.0
        self._last = None
        self._window = []  # (seconds, images) of recent intervals, for a smoothed rate

    def start(self):
        """Start (or restart after a pause) the wall clock; time before this is not charged."""
        self._last = time.perf_counter()

    def pause(self):
        """Stop charging time (held-out evaluation, checkpoint writes are not training compute)."""
        self._last = None

    def record(self, images):
        """Charge `images` trained since the last call, and the wall time they took."""
        now = time.perf_counter()
        seconds = 0.0 if self._last is None else now - self._last
        self._last = now
        self.images += int(images)
        self.flops += self.flops_per_image * images
        self.device_seconds += seconds * self.num_devices
        if seconds > 0:
            self._window = (self._window + [(seconds, images)])[-20:]

    @property
    def device_hours(self):
        return self.device_seconds / 3600.0

    def rates(self):
        """images/s, images/s per device, achieved FLOP/s and MFU (None without a peak) over recent steps."""
        seconds = sum(s for s, _ in self._window)
        images = sum(i for _, i in self._window)
        ips = images / seconds if seconds > 0 else 0.0
        achieved = ips * self.flops_per_image
        mfu = None
        if self.peak_flops_per_device:
            mfu = achieved / (self.peak_flops_per_device * self.num_devices)
        return {"images_per_second": ips, "images_per_second_per_device": ips / self.num_devices,
                "flops_per_second": achieved, "mfu": mfu}

    def state(self):
        return {"images": self.images, "flops": self.flops, "device_seconds": self.device_seconds}

    def load_state(self, state):
        self.images = int(state.get("images", 0))
        self.flops = float(state.get("flops", 0.0))
        self.device_seconds = float(state.get("device_seconds", 0.0))


def finite(x):
    return x is not None and bool(np.isfinite(x))
