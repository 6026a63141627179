"""Normalizer-free building blocks: scaled weight-standardised convolution, scaled activations, squeeze-excite,
stochastic depth and the NF bottleneck block.

Numerics follow the official DeepMind release (see NFNET_SPEC.md section 2). Backend-agnostic: `keras.ops` only,
channels-last.
"""
import contextlib
import functools

import keras
from keras import ops

# gamma such that gamma * act(z) has unit standard deviation for z ~ N(0, 1) (DeepMind's constants).
ACTIVATION_GAMMAS = {
    "gelu": 1.7015043497085571,
    "relu": 1.7139588594436646,
    "silu": 1.7881293296813965,
    "elu": 1.2716004848480225,
    "leaky_relu": 1.70590341091156,
    "tanh": 1.5939117670059204,
    "sigmoid": 4.803835391998291,
    "softplus": 1.9203323125839233,
    "identity": 1.0,
}


# Which reference implementation's arithmetic the layers reproduce. "deepmind" (default): the tanh-form GELU and
# the weight-standardisation floor rsqrt(max(var * fan_in, 1e-4)); "timm": exact erf GELU and
# 1 / sqrt(fan_in * (var + 1e-5)), so weights used in timm give timm's outputs. Same weights, same shapes.
NUMERICS = ("deepmind", "timm")
WS_EPS = {"deepmind": 1e-4, "timm": 1e-5}


def check_numerics(numerics):
    """Return `numerics` if it is one of NUMERICS, else raise a ValueError naming the accepted values."""
    if numerics not in NUMERICS:
        raise ValueError(f"Unknown numerics {numerics!r}; use one of {', '.join(NUMERICS)}.")
    return numerics


def _apply_activation(name, x, numerics="deepmind"):
    if name == "gelu":
        # tanh approximation: JAX's default (not Keras's), which DeepMind used; timm uses the exact erf form
        return ops.gelu(x, approximate=numerics == "deepmind")
    if name == "relu":
        return ops.relu(x)
    if name == "silu":
        return ops.silu(x)
    if name == "elu":
        return ops.elu(x, alpha=1.0)
    if name == "leaky_relu":
        return ops.leaky_relu(x, negative_slope=0.01)  # JAX's slope; Keras' default is 0.2
    if name == "tanh":
        return ops.tanh(x)
    if name == "sigmoid":
        return ops.sigmoid(x)
    if name == "softplus":
        return ops.softplus(x)
    return x


def check_activation(name):
    """Return `name` if it is a supported scaled activation, else raise a ValueError listing the supported ones."""
    if not isinstance(name, str) or name not in ACTIVATION_GAMMAS:
        raise ValueError(
            f"Unknown activation {name!r}; supported activations are: {', '.join(sorted(ACTIVATION_GAMMAS))}."
        )
    return name


@keras.saving.register_keras_serializable(package="keras_nfnet")
class ScaledActivation(keras.layers.Layer):
    """`gamma * act(x)`, with gamma chosen so that the output has unit variance for unit-Gaussian input."""

    def __init__(self, activation="gelu", numerics="deepmind", **kwargs):
        super().__init__(**kwargs)
        self.activation = check_activation(activation)
        self.numerics = check_numerics(numerics)
        self.gamma = ACTIVATION_GAMMAS[activation]

    def call(self, inputs):
        return _apply_activation(self.activation, inputs, self.numerics) * ops.cast(self.gamma, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "activation": self.activation, "numerics": self.numerics}


# How a grouped convolution is computed. One definition of the math, three kernels:
#   "native": one convolution with a grouped kernel (fast on GPU/TPU; on CPU Keras' TF backend compiles it with
#             XLA, whose CPU grouped kernel is an order of magnitude slower, and which TF Serving disables);
#   "split":  one ordinary convolution per group, concatenated (ordinary oneDNN/Eigen kernels on CPU, no XLA);
#   "auto":   "native" where the backend's default device is a GPU or TPU, else "split".
# A depthwise-like layer (one input channel per group) always uses the depthwise kernel.
GROUPED_CONV_FORMS = ("auto", "native", "split")
_form_override = []


@functools.lru_cache(maxsize=None)
def _accelerator_present():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    return False


def grouped_conv_form():
    """The form grouped convolutions take now: the innermost `use_grouped_conv_form` scope, else "auto" resolved."""
    form = _form_override[-1] if _form_override else "auto"
    if form == "auto":
        form = "native" if _accelerator_present() else "split"
    return form


@contextlib.contextmanager
def use_grouped_conv_form(form):
    """Compute grouped convolutions in `form` ("auto", "native" or "split") while tracing/calling in this scope.

    Export uses "split" so the SavedModel has no XLA-only function; benchmarks use it to compare forms.
    """
    if form not in GROUPED_CONV_FORMS:
        raise ValueError(f"Unknown grouped-convolution form {form!r}; use one of {', '.join(GROUPED_CONV_FORMS)}.")
    _form_override.append(form)
    try:
        yield
    finally:
        _form_override.pop()


def grouped_conv(inputs, kernel, strides, groups, form=None):
    """SAME-padded 2D convolution of NHWC `inputs` with an HWIO `kernel` of `groups` groups (in = kernel in * groups)."""
    if groups == 1:
        if kernel.shape[0] == kernel.shape[1] == 1 and strides == 1:
            # A 1x1 convolution is a matmul over channels. As one, its kernel gradient is a matmul too; as a
            # convolution XLA:CPU computes it as a spatial-window convolution 3-5x slower (docs/performance.md).
            return ops.matmul(inputs, kernel[0, 0])
        return ops.conv(inputs, kernel, strides=strides, padding="same")
    if kernel.shape[2] == 1:  # one input channel per group: the depthwise kernel, (kh, kw, 1, C*m) -> (kh, kw, C, m)
        kh, kw, _, out = kernel.shape
        depthwise = ops.reshape(kernel, (kh, kw, groups, out // groups))
        return ops.depthwise_conv(inputs, depthwise, strides=strides, padding="same")
    form = form or grouped_conv_form()
    if form == "native":
        return ops.conv(inputs, kernel, strides=strides, padding="same")
    parts = zip(ops.split(inputs, groups, axis=-1), ops.split(kernel, groups, axis=-1))
    return ops.concatenate([ops.conv(x, k, strides=strides, padding="same") for x, k in parts], axis=-1)


@keras.saving.register_keras_serializable(package="keras_nfnet")
class WSConv2D(keras.layers.Layer):
    """Scaled weight-standardised 2D convolution with a learnable per-channel gain and a bias, SAME padding.

    w_hat = (w - mean) * gain / sqrt(max(var * fan_in, 1e-4)), with mean and (biased) variance over the
    kernel's (height, width, in/groups) axes and fan_in = kh * kw * in_channels / groups. With numerics="timm":
    w_hat = (w - mean) * gain / sqrt(fan_in * (var + 1e-5)). `eps` None = the numerics' constant.
    """

    def __init__(self, filters, kernel_size=1, strides=1, groups=1, eps=None, numerics="deepmind", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.groups = int(groups)
        self.numerics = check_numerics(numerics)
        self.eps = float(WS_EPS[self.numerics] if eps is None else eps)
        if self.filters < 1 or self.kernel_size < 1 or self.strides < 1 or self.groups < 1:
            raise ValueError(
                f"WSConv2D needs positive filters, kernel_size, strides and groups; got filters={filters}, "
                f"kernel_size={kernel_size}, strides={strides}, groups={groups}."
            )
        if self.filters % self.groups:
            raise ValueError(f"WSConv2D filters ({filters}) must be divisible by groups ({groups}).")

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None or in_channels % self.groups:
            raise ValueError(
                f"WSConv2D '{self.name}' needs a known input channel count divisible by groups={self.groups}; "
                f"got input shape {tuple(input_shape)}."
            )
        shape = (self.kernel_size, self.kernel_size, in_channels // self.groups, self.filters)
        # The standardisation runs in float32 even under a mixed policy (autocast=False), then casts once.
        self.kernel = self.add_weight(
            name="kernel",
            shape=shape,
            initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "untruncated_normal"),
            autocast=False,
        )
        self.gain = self.add_weight(name="gain", shape=(self.filters,), initializer="ones", autocast=False)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def standardized_kernel(self):
        kernel = ops.convert_to_tensor(self.kernel)
        fan_in = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
        mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        var = ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        if self.numerics == "timm":
            scale = ops.rsqrt((var + self.eps) * fan_in) * ops.convert_to_tensor(self.gain)
        else:  # eps floors var * fan_in (DeepMind's formula); it is not an epsilon added inside the root
            scale = ops.rsqrt(ops.maximum(var * fan_in, self.eps)) * ops.convert_to_tensor(self.gain)
        return kernel * scale - mean * scale

    def call(self, inputs):
        kernel = ops.cast(self.standardized_kernel(), inputs.dtype)  # standardised once, then split if need be
        out = grouped_conv(inputs, kernel, self.strides, self.groups)
        return out + ops.cast(self.bias, out.dtype)

    def compute_output_shape(self, input_shape):
        def down(n):
            return None if n is None else -(-n // self.strides)

        return (input_shape[0], down(input_shape[1]), down(input_shape[2]), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "groups": self.groups,
            "eps": self.eps,
            "numerics": self.numerics,
        }


@keras.saving.register_keras_serializable(package="keras_nfnet")
class SqueezeExcite(keras.layers.Layer):
    """Spatial mean -> Dense(hidden) -> ReLU (plain, unscaled, as DeepMind) -> Dense(channels) -> sigmoid.

    Returns the per-channel gate of shape (batch, 1, 1, channels); the NF block multiplies by 2 * gate.
    """

    def __init__(self, channels, hidden_channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.hidden_channels = int(hidden_channels)
        dense_init = keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
        self.fc0 = keras.layers.Dense(self.hidden_channels, kernel_initializer=dense_init, dtype=self.dtype_policy,
                                      name="fc0")
        self.fc1 = keras.layers.Dense(self.channels, kernel_initializer=dense_init, dtype=self.dtype_policy,
                                      name="fc1")

    def build(self, input_shape):
        self.fc0.build((input_shape[0], input_shape[-1]))
        self.fc1.build((input_shape[0], self.hidden_channels))

    def call(self, inputs):
        h = ops.mean(inputs, axis=(1, 2))
        h = ops.sigmoid(self.fc1(ops.relu(self.fc0(h))))
        return h[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "hidden_channels": self.hidden_channels}


@keras.saving.register_keras_serializable(package="keras_nfnet")
class StochasticDepth(keras.layers.Layer):
    """Drops the whole residual branch per example with probability `rate` in training; no 1/keep rescale."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"StochasticDepth rate must be in [0, 1); got {rate}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        batch = ops.shape(inputs)[0]
        r = keras.random.uniform((batch, 1, 1, 1), dtype=inputs.dtype, seed=self.seed_generator)
        return inputs * ops.floor(1.0 - self.rate + r)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_nfnet")
class NFBlock(keras.layers.Layer):
    """The NFNet bottleneck block (transition when it changes stride or width):

        out = act(x) * beta
        shortcut = conv1x1(avgpool(out)) if stride > 1 else conv1x1(out) if in != out else x
        branch = conv1x1(act(conv3x3_g(act(conv3x3_g(act(conv1x1(out))))))); branch *= 2 * SE(branch)
        return stochastic_depth(branch) * skip_gain * alpha + shortcut

    `skip_gain` is one scalar initialised to 0 (SkipInit).
    """

    def __init__(self, in_channels, out_channels, mid_channels, group_width, se_channels, strides=1,
                 alpha=0.2, beta=1.0, stochastic_depth_rate=0.0, activation="gelu", seed=None, numerics="deepmind",
                 **kwargs):
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.mid_channels = int(mid_channels)
        self.group_width = int(group_width)
        self.se_channels = int(se_channels)
        self.strides = int(strides)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.stochastic_depth_rate = float(stochastic_depth_rate)
        self.activation = check_activation(activation)
        self.seed = seed
        self.numerics = check_numerics(numerics)
        if self.mid_channels < self.group_width or self.mid_channels % self.group_width:
            raise ValueError(
                f"NFBlock '{self.name}': mid_channels ({mid_channels}) must be a positive multiple of "
                f"group_width ({group_width})."
            )
        groups = self.mid_channels // self.group_width
        policy = self.dtype_policy
        ws = dict(numerics=self.numerics, dtype=policy)
        self.act = ScaledActivation(activation, name="act", **ws)
        self.conv0 = WSConv2D(self.mid_channels, 1, name="conv0", **ws)
        self.conv1 = WSConv2D(self.mid_channels, 3, strides=self.strides, groups=groups, name="conv1", **ws)
        self.conv1b = WSConv2D(self.mid_channels, 3, groups=groups, name="conv1b", **ws)
        self.conv2 = WSConv2D(self.out_channels, 1, name="conv2", **ws)
        self.use_projection = self.strides > 1 or self.in_channels != self.out_channels
        self.conv_shortcut = WSConv2D(self.out_channels, 1, name="conv_shortcut", **ws) if self.use_projection else None
        self.se = SqueezeExcite(self.out_channels, self.se_channels, dtype=policy, name="se")
        self.stochastic_depth = (
            StochasticDepth(self.stochastic_depth_rate, seed=seed, dtype=policy, name="stochastic_depth")
            if self.stochastic_depth_rate > 0.0 else None
        )

    def build(self, input_shape):
        if input_shape[-1] != self.in_channels:
            raise ValueError(
                f"NFBlock '{self.name}' expects {self.in_channels} input channels; got shape {tuple(input_shape)}."
            )
        batch, h, w = input_shape[0], input_shape[1], input_shape[2]
        self.conv0.build(input_shape)
        self.conv1.build((batch, h, w, self.mid_channels))
        out_hw = self.conv1.compute_output_shape((batch, h, w, self.mid_channels))
        self.conv1b.build(out_hw)
        self.conv2.build(out_hw)
        if self.conv_shortcut is not None:
            self.conv_shortcut.build(input_shape)
        self.se.build((batch, out_hw[1], out_hw[2], self.out_channels))
        self.skip_gain = self.add_weight(name="skip_gain", shape=(), initializer="zeros")

    def _preactivation(self, x):
        return self.act(x) * ops.cast(self.beta, x.dtype)

    def _branch(self, preactivated):
        out = self.conv0(preactivated)
        out = self.conv1(self.act(out))
        out = self.conv1b(self.act(out))
        out = self.conv2(self.act(out))
        return out * (2.0 * self.se(out))  # x2 restores the variance halved by a sigmoid gate near 0.5

    def residual_branch(self, inputs):
        """The residual branch output (after the SE gate, before stochastic depth, skip gain and alpha)."""
        return self._branch(self._preactivation(inputs))

    def call(self, inputs, training=False):
        out = self._preactivation(inputs)
        if self.strides > 1:
            shortcut = self.conv_shortcut(ops.average_pool(out, 2, strides=2, padding="same"))
        elif self.use_projection:
            shortcut = self.conv_shortcut(out)
        else:
            shortcut = inputs
        branch = self._branch(out)
        if self.stochastic_depth is not None:
            branch = self.stochastic_depth(branch, training=training)
        scale = ops.cast(self.skip_gain, branch.dtype) * ops.cast(self.alpha, branch.dtype)
        return branch * scale + shortcut

    def compute_output_shape(self, input_shape):
        def down(n):
            return None if n is None else -(-n // self.strides)

        return (input_shape[0], down(input_shape[1]), down(input_shape[2]), self.out_channels)

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "mid_channels": self.mid_channels,
            "group_width": self.group_width,
            "se_channels": self.se_channels,
            "strides": self.strides,
            "alpha": self.alpha,
            "beta": self.beta,
            "stochastic_depth_rate": self.stochastic_depth_rate,
            "activation": self.activation,
            "seed": self.seed,
            "numerics": self.numerics,
        }
