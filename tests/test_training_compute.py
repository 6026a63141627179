"""The compute clock against independent numbers: published NFNet MACs, hand-computed totals, MFU arithmetic,
and accumulation across a save/restore."""
import time

import pytest

from keras_nfnet.training.compute import ComputeClock, measure_peak_flops, train_flops_per_image


def test_train_flops_are_six_times_published_macs():
    # NFNET_SPEC.md: F0 has 12.38 GMACs at its 256 px test resolution (1000 classes).
    assert train_flops_per_image("F0", 256) == pytest.approx(6 * 12.38e9, rel=5e-3)
    assert train_flops_per_image("F1", 320) == pytest.approx(6 * 35.54e9, rel=5e-3)


def test_clock_accumulates_and_survives_restore():
    clock = ComputeClock(flops_per_image=1e6, num_devices=4, peak_flops_per_device=1e9)
    clock.start()
    time.sleep(0.05)
    clock.record(100)
    time.sleep(0.05)
    clock.record(100)
    assert clock.images == 200 and clock.flops == pytest.approx(2e8)
    assert 4 * 0.09 < clock.device_seconds < 4 * 1.0
    rates = clock.rates()
    seconds = clock.device_seconds / 4
    assert rates["images_per_second"] == pytest.approx(200 / seconds, rel=1e-6)
    assert rates["images_per_second_per_device"] == pytest.approx(200 / seconds / 4, rel=1e-6)
    assert rates["mfu"] == pytest.approx(200 / seconds * 1e6 / (4 * 1e9), rel=1e-6)

    restored = ComputeClock(flops_per_image=1e6, num_devices=4)
    restored.load_state(clock.state())
    restored.start()
    restored.record(50)  # no time passes between start and record worth counting
    assert restored.images == 250 and restored.flops == pytest.approx(2.5e8)
    assert restored.device_seconds >= clock.device_seconds
    assert restored.rates()["mfu"] is None  # no peak given


def test_paused_time_is_not_charged():
    clock = ComputeClock(1.0, 1)
    clock.start()
    clock.record(1)
    clock.pause()
    time.sleep(0.1)
    clock.record(1)  # first record after a pause charges images, not the paused time
    assert clock.device_seconds < 0.05 and clock.images == 2


def test_bad_arguments():
    with pytest.raises(ValueError):
        ComputeClock(0, 1)
    with pytest.raises(ValueError):
        ComputeClock(1.0, 0)


def test_measured_peak_is_plausible():
    peak = measure_peak_flops(seconds=0.2, size=256)
    assert 1e8 < peak < 1e15
