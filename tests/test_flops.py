"""Analytic parameter and MAC counts against the published NFNet table (NFNET_SPEC.md section 1) and against
really built models."""
import numpy as np
import pytest
import keras

from keras_nfnet import layers as nf
from keras_nfnet.flops import count_macs, count_params
from keras_nfnet.models import NFNet
from keras_nfnet.variants import LADDER, VARIANTS

# (params in M with a 1000-class head, MACs in G at the test resolution), published in the NFNet paper.
PUBLISHED = {
    "F0": (71.5, 12.38), "F1": (132.6, 35.54), "F2": (193.8, 62.59), "F3": (254.9, 114.76),
    "F4": (316.1, 215.24), "F5": (377.2, 289.76), "F6": (438.4, 377.28),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_params_and_macs(name):
    params_m, macs_g = PUBLISHED[name]
    assert round(count_params(name) / 1e6, 1) == params_m
    macs = count_macs(name, VARIANTS[name].test_image_size) / 1e9
    assert abs(macs - macs_g) / macs_g < 0.005, macs


def test_derived_rows():
    # F7 and the "+" rows: [DM]'s arithmetic as quoted in NFNET_SPEC.md ("~" figures, one decimal).
    assert count_params("F7") / 1e6 == pytest.approx(499.5, abs=0.05)
    assert count_params("F3+") / 1e6 == pytest.approx(423.4, abs=0.05)
    assert count_params("F7+") / 1e6 == pytest.approx(829.6, abs=0.05)
    assert count_macs("F7", 608) / 1e9 == pytest.approx(478.8, abs=0.05)
    assert count_macs("F3+", 224) / 1e9 == pytest.approx(51.7, abs=0.05)
    assert count_macs("F7+", 224) / 1e9 == pytest.approx(100.7, abs=0.05)
    assert count_macs("F7+", 384) / 1e9 == pytest.approx(295.4, abs=0.05)
    # with a 30k-class head F7+ is ~948M
    assert count_params("F7+", num_classes=30_000) / 1e6 == pytest.approx(948, abs=0.5)


def test_analytic_params_match_built_f0():
    # Building F0 (71M parameters) takes a couple of seconds and ~0.3 GB; it has every kind of block (stride-1
    # projection, stride-2 transition, plain) at full width, so it checks the walker at published scale. Larger
    # rows repeat the same blocks more times and are only counted, not built (F7+ would need ~3.3 GB).
    model = NFNet("F0")
    assert model.count_params() == count_params("F0") == count_params(model)


@pytest.mark.parametrize("name", ["tiny"] + list(LADDER))
def test_analytic_params_match_built_small(name):
    for num_classes, include_top in [(10, True), (1000, True), (None, False)]:
        model = NFNet(name, num_classes=num_classes, include_top=include_top)
        assert model.count_params() == count_params(name, num_classes or 1000, include_top=include_top)


def _measured_macs(model, image_shape):
    """MACs from the shapes a real forward pass produces: every conv's and dense layer's kernel size times its
    output positions, recorded by wrapping the layers' call."""
    macs = []
    originals = {cls: cls.call for cls in (nf.WSConv2D, keras.layers.Dense)}

    def conv_call(self, inputs):
        out = originals[nf.WSConv2D](self, inputs)
        macs.append(int(np.prod(out.shape[1:3])) * int(np.prod(self.kernel.shape)))
        return out

    def dense_call(self, inputs, *args, **kwargs):
        macs.append(int(np.prod(self.kernel.shape)))
        return originals[keras.layers.Dense](self, inputs, *args, **kwargs)

    nf.WSConv2D.call, keras.layers.Dense.call = conv_call, dense_call
    try:
        model(np.zeros((1,) + image_shape, np.float32), training=False)
    finally:
        nf.WSConv2D.call, keras.layers.Dense.call = originals[nf.WSConv2D], originals[keras.layers.Dense]
    return sum(macs)


@pytest.mark.parametrize("name,shape", [("tiny", (32, 32, 3)), ("S1", (48, 64, 3)), ("S2", (40, 40, 3))])
def test_analytic_macs_match_built_model(name, shape):
    model = NFNet(name, num_classes=7)
    assert count_macs(model, shape[:2]) == _measured_macs(model, shape)
    assert count_macs(name, shape[:2], num_classes=7) == count_macs(model, shape[:2])


def test_macs_scale_with_resolution():
    # Doubling the side quadruples every conv's work; only the SE and classifier dense layers stay fixed.
    small, big = count_macs("F0", 128), count_macs("F0", 256)
    assert 3.9 < big / small < 4.0


def test_bad_image_size():
    with pytest.raises(ValueError, match="image_size"):
        count_macs("F0", "224")
    with pytest.raises(ValueError, match="Unknown NFNet variant"):
        count_params("F11")
