"""NF layers against independent numpy references (backend-agnostic: also run under KERAS_BACKEND=jax)."""
import math

import numpy as np
import pytest
import keras

from keras_nfnet import layers as nf


def np_standardize(w, gain, floor=1e-4):
    """NFNET_SPEC.md section 2: scale = rsqrt(max(var * fan_in, 1e-4)) * gain; w_hat = w * scale - mean * scale."""
    w = w.astype(np.float64)
    fan_in = w.shape[0] * w.shape[1] * w.shape[2]
    mean = w.mean(axis=(0, 1, 2), keepdims=True)
    var = w.var(axis=(0, 1, 2), keepdims=True)
    scale = gain / np.sqrt(np.maximum(var * fan_in, floor))
    return w * scale - mean * scale


def np_conv_same(x, w, stride, groups):
    """Direct-loop grouped 2D convolution, NHWC x HWIO, TensorFlow's SAME padding (extra pad after)."""
    n, h, wd, cin = x.shape
    kh, kw, cin_g, cout = w.shape
    oh, ow = math.ceil(h / stride), math.ceil(wd / stride)
    ph = max((oh - 1) * stride + kh - h, 0)
    pw = max((ow - 1) * stride + kw - wd, 0)
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((n, oh, ow, cout))
    cout_g = cout // groups
    for g in range(groups):
        xs = xp[..., g * cin_g:(g + 1) * cin_g]
        ws = w[..., g * cout_g:(g + 1) * cout_g]
        for i in range(oh):
            for j in range(ow):
                patch = xs[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
                out[:, i, j, g * cout_g:(g + 1) * cout_g] = np.einsum("nhwc,hwco->no", patch, ws)
    return out


def _random_wsconv(kernel_size, strides, groups, size, dtype="float32"):
    rng = np.random.default_rng(kernel_size * 100 + strides * 10 + groups)
    cin, cout = 8, 16
    layer = nf.WSConv2D(cout, kernel_size, strides=strides, groups=groups, dtype=dtype)
    x = rng.standard_normal((2, size, size + 1, cin)).astype("float32")
    layer.build(x.shape)
    w = (rng.standard_normal(layer.kernel.shape) * 0.3 + 0.1).astype("float32")
    gain = rng.uniform(0.5, 2.0, cout).astype("float32")
    bias = rng.standard_normal(cout).astype("float32")
    layer.kernel.assign(w)
    layer.gain.assign(gain)
    layer.bias.assign(bias)
    want = np_conv_same(x, np_standardize(w, gain), strides, groups) + bias
    return layer, x, want


# Ungrouped, grouped, and depthwise-like (groups = input channels: 8 in, 16 out) at strides 1 and 2.
CONV_CASES = [(1, 1, 1, 7), (3, 1, 1, 8), (3, 2, 1, 9), (3, 2, 4, 8), (5, 1, 2, 6), (3, 1, 8, 5), (1, 2, 2, 7),
              (3, 2, 8, 9)]


@pytest.mark.parametrize("form", ["native", "split"])
@pytest.mark.parametrize("kernel_size,strides,groups,size", CONV_CASES)
def test_wsconv_matches_numpy(kernel_size, strides, groups, size, form):
    layer, x, want = _random_wsconv(kernel_size, strides, groups, size)
    with nf.use_grouped_conv_form(form):
        got = keras.ops.convert_to_numpy(layer(x))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_size,strides,groups,size", [(3, 1, 4, 8), (3, 2, 2, 9), (3, 2, 8, 9)])
def test_wsconv_forms_agree_in_mixed_precision(kernel_size, strides, groups, size):
    """bfloat16 compute: both forms within bf16 rounding of the float64 reference, and of each other."""
    layer, x, want = _random_wsconv(kernel_size, strides, groups, size, dtype="mixed_bfloat16")
    outs = {}
    for form in ("native", "split"):
        with nf.use_grouped_conv_form(form):
            out = layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
        outs[form] = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
        scale = np.abs(want).max()
        np.testing.assert_allclose(outs[form], want, atol=0.05 * scale)
    np.testing.assert_allclose(outs["native"], outs["split"], atol=0.02 * np.abs(want).max())


def test_grouped_conv_forms_agree_in_gradients():
    """The gradient w.r.t. input and kernel is the same whichever kernel computes the grouped convolution."""
    layer, x, _ = _random_wsconv(3, 2, 4, 9)
    grads = {}
    for form in ("native", "split"):
        with nf.use_grouped_conv_form(form):
            grads[form] = _input_and_kernel_grads(layer, x)
    for a, b in zip(grads["native"], grads["split"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_pointwise_conv_as_matmul_has_the_conv_kernels_gradients(monkeypatch):
    """1x1 stride-1 convolutions run as a matmul; input and kernel gradients equal the backend's conv kernel's."""
    layer, x, want = _random_wsconv(1, 1, 1, 7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), want, rtol=1e-4, atol=1e-4)
    got = _input_and_kernel_grads(layer, x)
    monkeypatch.setattr(nf, "grouped_conv", lambda inputs, kernel, strides, groups: keras.ops.conv(
        inputs, kernel, strides=strides, padding="same"))
    reference = _input_and_kernel_grads(layer, x)
    for a, b in zip(got, reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _input_and_kernel_grads(layer, x):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(tf.square(layer(xt)))
        gx, gk = tape.gradient(loss, [xt, layer.kernel.value])
        return gx.numpy(), gk.numpy()
    import jax

    def loss(xv, kv):
        out, _ = layer.stateless_call([kv, layer.gain.value, layer.bias.value], [], xv)
        return (out ** 2).sum()

    gx, gk = jax.grad(loss, argnums=(0, 1))(x, layer.kernel.value)
    return np.asarray(gx), np.asarray(gk)


def test_grouped_conv_form_scope_and_errors():
    assert nf.grouped_conv_form() in ("native", "split")
    with nf.use_grouped_conv_form("split"):
        assert nf.grouped_conv_form() == "split"
        with nf.use_grouped_conv_form("native"):
            assert nf.grouped_conv_form() == "native"
        assert nf.grouped_conv_form() == "split"
    with pytest.raises(ValueError, match="Unknown grouped-convolution form 'xla'"):
        with nf.use_grouped_conv_form("xla"):
            pass


def test_wsconv_floor_is_on_var_times_fan_in():
    # Output channel 0 has var * fan_in = 5e-5 (below the 1e-4 floor), channel 1 has 2e-4 (above it). An epsilon
    # inside the root (rsqrt(var * fan_in + 1e-4)) would give results 18-22% off on both.
    layer = nf.WSConv2D(2, 3)
    layer.build((1, 5, 5, 4))
    fan_in = 3 * 3 * 4
    noise = np.random.default_rng(0).standard_normal((3, 3, 4, 2))
    noise = (noise - noise.mean(axis=(0, 1, 2))) / noise.std(axis=(0, 1, 2))
    w = (0.5 + noise * np.sqrt(np.array([5e-5, 2e-4]) / fan_in)).astype("float32")
    layer.kernel.assign(w)
    got = keras.ops.convert_to_numpy(layer.standardized_kernel())
    np.testing.assert_allclose(got, np_standardize(w, np.ones(2)), rtol=1e-3, atol=1e-4)
    assert np.allclose(got[..., 1].std() ** 2 * fan_in, 1.0, rtol=1e-3)  # above the floor: unit norm
    assert np.allclose(got[..., 0].std() ** 2 * fan_in, 0.5, rtol=1e-3)  # floored: 5e-5 / 1e-4


def test_wsconv_init_and_variable_names():
    layer = nf.WSConv2D(64, 3, groups=2)
    layer.build((None, 8, 8, 32))
    assert sorted(v.path.split("/")[-1] for v in layer.weights) == ["bias", "gain", "kernel"]
    assert tuple(layer.kernel.shape) == (3, 3, 16, 64)
    w = keras.ops.convert_to_numpy(layer.kernel)
    assert abs(w.std() - math.sqrt(1 / (3 * 3 * 16))) < 0.02  # untruncated N(0, 1/fan_in)
    assert np.abs(w).max() > 2.5 * w.std()  # not truncated at 2 std
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.gain), 1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.bias), 0.0)


def test_wsconv_bad_groups():
    with pytest.raises(ValueError, match="divisible by groups"):
        nf.WSConv2D(10, 3, groups=4)
    layer = nf.WSConv2D(8, 3, groups=4)
    with pytest.raises(ValueError, match="divisible by groups"):
        layer.build((None, 8, 8, 6))


def _np_act(name, z):
    if name == "gelu":  # tanh approximation
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
    return {
        "relu": lambda: np.maximum(z, 0),
        "silu": lambda: z / (1 + np.exp(-z)),
        "elu": lambda: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
        "leaky_relu": lambda: np.where(z > 0, z, 0.01 * z),
        "tanh": lambda: np.tanh(z),
        "sigmoid": lambda: 1 / (1 + np.exp(-z)),
        "softplus": lambda: np.log1p(np.exp(z)),
        "identity": lambda: z,
    }[name]()


@pytest.mark.parametrize("name", sorted(nf.ACTIVATION_GAMMAS))
def test_scaled_activation_has_unit_std_under_gaussian(name):
    # Gauss-Hermite quadrature of E[f(z)] and E[f(z)^2], z ~ N(0, 1): an independent check of each gamma.
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / weights.sum()
    layer = nf.ScaledActivation(name)
    f = keras.ops.convert_to_numpy(layer(nodes.astype("float32"))).astype(np.float64)
    np.testing.assert_allclose(f, nf.ACTIVATION_GAMMAS[name] * _np_act(name, nodes), rtol=2e-5, atol=2e-5)
    std = math.sqrt(np.sum(weights * f ** 2) - np.sum(weights * f) ** 2)
    assert abs(std - 1.0) < 2e-3, (name, std)


def test_gelu_is_tanh_approximation():
    z = np.linspace(-4, 4, 101).astype("float32")
    got = keras.ops.convert_to_numpy(nf.ScaledActivation("gelu")(z)) / 1.7015043497085571
    np.testing.assert_allclose(got, _np_act("gelu", z.astype(np.float64)), atol=1e-6)


def test_unknown_activation_lists_supported():
    with pytest.raises(ValueError, match="gelu.*relu|relu.*gelu") as err:
        nf.ScaledActivation("swishy")
    assert "swishy" in str(err.value) and "identity" in str(err.value)


def test_squeeze_excite_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 4, 8)).astype("float32")
    se = nf.SqueezeExcite(8, 4)
    se.build(x.shape)
    for dense in (se.fc0, se.fc1):
        dense.bias.assign(rng.standard_normal(dense.bias.shape).astype("float32"))
    w0, b0 = (keras.ops.convert_to_numpy(v) for v in (se.fc0.kernel, se.fc0.bias))
    w1, b1 = (keras.ops.convert_to_numpy(v) for v in (se.fc1.kernel, se.fc1.bias))
    h = np.maximum(x.mean(axis=(1, 2)) @ w0 + b0, 0)  # plain ReLU
    want = 1 / (1 + np.exp(-(h @ w1 + b1)))
    got = keras.ops.convert_to_numpy(se(x))
    assert got.shape == (3, 1, 1, 8)
    np.testing.assert_allclose(got[:, 0, 0, :], want, rtol=1e-5, atol=1e-6)


def test_stochastic_depth_per_example_without_rescale():
    x = np.ones((4000, 1, 1, 2), np.float32)
    layer = nf.StochasticDepth(0.25, seed=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    assert set(np.unique(y)) <= {0.0, 1.0}  # no 1/keep rescale
    assert np.all(y[:, :, :, 0] == y[:, :, :, 1])  # one decision per example
    assert abs(1 - y.mean() - 0.25) < 0.03  # 3 sigma for 4000 Bernoulli draws is 0.02


def _np_block(block, x):
    """numpy forward of an NFBlock from its variables (inference)."""
    gamma = nf.ACTIVATION_GAMMAS[block.activation]
    act = lambda z: gamma * _np_act(block.activation, z)  # noqa: E731
    get = lambda v: keras.ops.convert_to_numpy(v).astype(np.float64)  # noqa: E731

    def conv(layer, z):
        return np_conv_same(z, np_standardize(get(layer.kernel), get(layer.gain)), layer.strides,
                            layer.groups) + get(layer.bias)

    out = act(x) * block.beta
    if block.strides > 1:
        n, h, w, c = out.shape  # even sizes here: 2x2 average pooling
        pooled = out.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        shortcut = conv(block.conv_shortcut, pooled)
    elif block.use_projection:
        shortcut = conv(block.conv_shortcut, out)
    else:
        shortcut = x
    y = conv(block.conv0, out)
    y = conv(block.conv1, act(y))
    y = conv(block.conv1b, act(y))
    y = conv(block.conv2, act(y))
    hid = np.maximum(y.mean(axis=(1, 2)) @ get(block.se.fc0.kernel) + get(block.se.fc0.bias), 0)
    gate = 1 / (1 + np.exp(-(hid @ get(block.se.fc1.kernel) + get(block.se.fc1.bias))))
    y = y * 2 * gate[:, None, None, :]
    return y * get(block.skip_gain) * block.alpha + shortcut


@pytest.mark.parametrize("in_ch,out_ch,strides", [(8, 8, 1), (8, 16, 1), (8, 16, 2)])
def test_nf_block_matches_numpy(in_ch, out_ch, strides):
    rng = np.random.default_rng(in_ch + out_ch + strides)
    block = nf.NFBlock(in_ch, out_ch, mid_channels=8, group_width=4, se_channels=out_ch // 2, strides=strides,
                       alpha=0.3, beta=0.8, stochastic_depth_rate=0.1)
    x = rng.standard_normal((2, 6, 8, in_ch)).astype("float32")
    block.build(x.shape)
    assert float(keras.ops.convert_to_numpy(block.skip_gain)) == 0.0  # SkipInit
    assert tuple(block.skip_gain.shape) == ()
    block.skip_gain.assign(1.7)
    got = keras.ops.convert_to_numpy(block(x, training=False))
    np.testing.assert_allclose(got, _np_block(block, x.astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_nf_block_rejects_bad_bottleneck():
    with pytest.raises(ValueError, match="group_width"):
        nf.NFBlock(8, 16, mid_channels=6, group_width=4, se_channels=8)


def test_layers_serialize():
    for layer in [nf.WSConv2D(8, 3, strides=2, groups=2), nf.ScaledActivation("silu"), nf.SqueezeExcite(8, 4),
                  nf.StochasticDepth(0.1), nf.NFBlock(8, 16, 8, 4, 8, strides=2, beta=0.5)]:
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
