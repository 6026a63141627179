"""The ViT baseline: closed-form parameter and MAC counts against the built model and a numpy forward pass that
counts its own multiply-accumulates; resolutions, saving, training; the compute ladder against the NFNet one."""
import math
import os

import keras
import numpy as np
import pytest

from keras_nfnet import architectures, flops
from keras_nfnet.vit import ViT
from keras_nfnet.vit_variants import VIT_LADDER, VIT_VARIANTS, count_macs, count_params, get_vit_variant
from keras_nfnet.variants import LADDER


@pytest.mark.parametrize("name", list(VIT_VARIANTS))
def test_param_count_matches_built_model(name):
    for classes in (1, 10, 1000):
        model = ViT(name, num_classes=classes, input_shape=(32, 32, 3))
        assert count_params(name, num_classes=classes) == model.count_params()
    assert count_params(name, include_top=False) == ViT(name, include_top=False).count_params()


def _layer_norm(x, gamma, beta):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * gamma + beta


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def numpy_vit(model, images):
    """The ViT forward pass in numpy from the model's weights; returns (logits, MACs per image counted here)."""
    row = get_vit_variant(model.variant)
    p, d, heads = row.patch_size, row.width, row.num_heads
    macs = [0]
    b, h, w, _ = images.shape

    def mm(a, kernel):
        macs[0] += int(np.prod(a.shape[:-1])) * a.shape[-1] * kernel.shape[-1] // b
        return a @ kernel

    gh, gw = h // p, w // p
    patches = images.reshape(b, gh, p, gw, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * 3)
    embed = model.get_layer("patches").embed
    x = mm(patches, embed.kernel.numpy().reshape(p * p * 3, d)) + embed.bias.numpy()
    q = d // 4
    omega = 1.0 / 10000 ** (np.arange(q) / (q - 1))
    ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    ys, xs = ys.reshape(-1, 1) * omega, xs.reshape(-1, 1) * omega
    x = x + np.concatenate([np.sin(xs), np.cos(xs), np.sin(ys), np.cos(ys)], 1)[None]
    n, hd = gh * gw, d // heads
    for i in range(row.depth):
        blk = model.get_layer(f"block{i}")
        y = _layer_norm(x, blk.norm1.gamma.numpy(), blk.norm1.beta.numpy())
        qkv = (mm(y, blk.qkv.kernel.numpy()) + blk.qkv.bias.numpy()).reshape(b, n, 3, heads, hd)
        qh, kh, vh = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # [b, heads, n, hd]
        scores = qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(hd)
        macs[0] += heads * n * n * hd
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        out = (att @ vh).transpose(0, 2, 1, 3).reshape(b, n, d)
        macs[0] += heads * n * n * hd
        x = x + mm(out, blk.proj.kernel.numpy()) + blk.proj.bias.numpy()
        y = _layer_norm(x, blk.norm2.gamma.numpy(), blk.norm2.beta.numpy())
        y = _gelu_tanh(mm(y, blk.fc1.kernel.numpy()) + blk.fc1.bias.numpy())
        x = x + mm(y, blk.fc2.kernel.numpy()) + blk.fc2.bias.numpy()
    norm = model.get_layer("final_norm")
    pooled = _layer_norm(x, norm.gamma.numpy(), norm.beta.numpy()).mean(1)
    cls = model.get_layer("classifier")
    return mm(pooled, cls.kernel.numpy()) + cls.bias.numpy(), macs[0]


@pytest.mark.parametrize("name,size", [("vit-tiny", 32), ("ViT-0", 32), ("ViT-2", 48)])
def test_forward_and_mac_count_match_numpy(name, size):
    keras.utils.set_random_seed(1)
    model = ViT(name, num_classes=7)
    cls = model.get_layer("classifier")
    cls.set_weights([np.random.default_rng(0).normal(0, 0.3, w.shape).astype("float32") for w in cls.get_weights()])
    images = np.random.default_rng(2).normal(0, 1, (2, size, size, 3)).astype("float32")
    expected, macs = numpy_vit(model, images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), expected, rtol=2e-4, atol=2e-4)
    assert count_macs(name, size, num_classes=7) == macs


def test_ladder_matches_nfnet_ladder_in_compute():
    for vit_name, nfnet_name in zip(VIT_LADDER, LADDER):
        ratio = count_macs(vit_name, 32, 10) / flops.count_macs(nfnet_name, 32, 10)
        assert 0.8 < ratio < 1.3, (vit_name, nfnet_name, ratio)
        assert VIT_VARIANTS[vit_name].train_image_size == architectures.get_row(nfnet_name).train_image_size
    macs = [count_macs(v, 32, 10) for v in VIT_LADDER]
    assert macs == sorted(macs) and macs[-1] > 10 * macs[0]


def test_resolutions_errors_and_save_load(tmp_path):
    model = ViT("vit-tiny", num_classes=3)
    for size in (16, 32, 48):
        assert tuple(model(np.zeros((1, size, size, 3), "float32")).shape) == (1, 3)
    with pytest.raises(ValueError, match="multiples of its patch size 8"):
        ViT("vit-tiny", input_shape=(30, 30, 3))
    with pytest.raises(ValueError, match="Unknown ViT variant"):
        ViT("ViT-9")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    assert isinstance(loaded, ViT)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               atol=1e-6)


def test_fit_reduces_loss_and_drop_path_only_in_training():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    images = rng.normal(0, 0.3, (64, 16, 16, 3)).astype("float32") + labels[:, None, None, None].astype("float32")
    model = ViT("vit-tiny", num_classes=2, stochastic_depth_rate=0.5, input_shape=(16, 16, 3))
    x = images[:4]
    a, b = (keras.ops.convert_to_numpy(model(x, training=False)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(images, labels, epochs=8, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="runs itself again on JAX from TensorFlow")
def test_vit_on_jax():
    import subprocess
    import sys

    pytest.importorskip("jax")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": root}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "tests/test_vit.py", "-k",
           "forward_and_mac or resolutions or fit_reduces"]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]


def test_architectures_dispatch_names_rows_and_dicts():
    from keras_nfnet.variants import VARIANTS

    for name in ("S1", VARIANTS["S1"], VARIANTS["S1"].to_dict()):
        assert architectures.family(name) == "nfnet"
        assert architectures.get_row(name) == VARIANTS["S1"]
        assert architectures.count_macs(name, 32, 10) == flops.count_macs("S1", 32, num_classes=10)
    for name in ("ViT-1", VIT_VARIANTS["ViT-1"], VIT_VARIANTS["ViT-1"].to_dict()):
        assert architectures.family(name) == "vit"
        assert architectures.get_row(name) == VIT_VARIANTS["ViT-1"]
        assert architectures.count_params(name, 10) == count_params("ViT-1", num_classes=10)
    assert isinstance(architectures.build("vit-tiny", 3), ViT)
    with pytest.raises(ValueError, match="unknown model 'F9'"):
        architectures.family("F9")


def test_pretraining_config_accepts_vit_names_and_checks_the_patch():
    from keras_nfnet.jobs import config as config_lib
    from keras_nfnet.jobs import defaults
    from keras_nfnet.jobs.pretrain import validate

    with pytest.raises(ValueError) as info:
        validate(config_lib.override(defaults.pretrain(), {"variant": "ViT-0", "image_size": 30}))
    assert "image_size=30 is not a multiple of ViT-0's patch size (4 px)" in str(info.value)
    assert "unknown variant" not in str(info.value)
    with pytest.raises(ValueError, match="unknown variant 'ViT-7'"):
        validate(config_lib.override(defaults.pretrain(), {"variant": "ViT-7"}))
