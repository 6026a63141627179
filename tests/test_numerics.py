"""The numerics switch: WSConv2D and ScaledActivation against numpy formulas of DeepMind's and timm's arithmetic,
and `numerics` surviving get_config and a .keras round trip of NFNet."""
import math

import keras
import numpy as np
import pytest

from keras_nfnet.layers import ScaledActivation, WSConv2D
from keras_nfnet.models import NFNet


def standardized(w, gain, numerics):
    mean = w.mean(axis=(0, 1, 2), keepdims=True)
    var = w.var(axis=(0, 1, 2), keepdims=True)
    fan_in = np.prod(w.shape[:3])
    if numerics == "timm":
        return gain * (w - mean) / np.sqrt(fan_in * (var + 1e-5))
    return gain * (w - mean) / np.sqrt(np.maximum(var * fan_in, 1e-4))


@pytest.mark.parametrize("numerics", ["deepmind", "timm"])
def test_ws_conv_standardisation_matches_the_formula(numerics):
    rng = np.random.default_rng(0)
    layer = WSConv2D(6, 3, numerics=numerics)
    layer.build((None, 8, 8, 4))
    # per-channel scales down to 1e-3: some variances sit at DeepMind's floor, where the formulas differ most
    w = (rng.normal(size=(3, 3, 4, 6)) * np.logspace(-3, 0, 6)).astype(np.float32)
    gain = rng.uniform(0.5, 1.5, size=6).astype(np.float32)
    layer.kernel.assign(w)
    layer.gain.assign(gain)
    got = np.asarray(layer.standardized_kernel())
    np.testing.assert_allclose(got, standardized(w.astype(np.float64), gain, numerics), rtol=2e-5, atol=1e-6)
    other = "timm" if numerics == "deepmind" else "deepmind"
    assert np.abs(got - standardized(w.astype(np.float64), gain, other)).max() > 1e-2


@pytest.mark.parametrize("numerics", ["deepmind", "timm"])
def test_gelu_form_follows_numerics(numerics):
    x = np.linspace(-4, 4, 81).astype(np.float32)
    got = np.asarray(ScaledActivation("gelu", numerics=numerics)(x))
    if numerics == "timm":
        ref = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    else:
        ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(got, 1.7015043497085571 * ref, rtol=1e-5, atol=1e-6)


def test_numerics_in_configs_and_keras_files(tmp_path):
    assert WSConv2D.from_config(WSConv2D(4, numerics="timm").get_config()).eps == 1e-5
    assert WSConv2D(4).get_config()["eps"] == 1e-4
    model = NFNet("tiny", num_classes=3, numerics="timm")
    assert {layer.numerics for layer in model.blocks} == {"timm"}
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.numerics == "timm" and loaded.get_layer("stem_conv0").eps == 1e-5
    assert loaded.blocks[0].conv1.numerics == "timm" and loaded.get_layer("final_act").numerics == "timm"
    with pytest.raises(ValueError, match="Unknown numerics 'torch'; use one of deepmind, timm"):
        NFNet("tiny", numerics="torch")
