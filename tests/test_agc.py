"""AGC maths against an independent numpy implementation, exclusion, and argument errors (single device)."""
import warnings

import keras
import numpy as np
import pytest

from keras_nfnet import compat
from keras_nfnet.agc import AGC, unit_axes_for_model


def numpy_agc(grad, param, clip_factor, eps, axes):
    """The formula of NFNET_SPEC section 3, written independently of keras_nfnet."""
    grad = grad.astype(np.float64)
    param = param.astype(np.float64)
    keep = axes is not None
    p_norm = np.sqrt(np.sum(param ** 2, axis=axes, keepdims=keep))
    g_norm = np.sqrt(np.sum(grad ** 2, axis=axes, keepdims=keep))
    max_norm = np.maximum(p_norm, eps) * clip_factor
    clipped = grad * max_norm / np.maximum(g_norm, 1e-6)
    over = g_norm > max_norm
    return np.where(over, clipped, grad), int(np.sum(over)), int(np.size(over))


def apply_gradients(optimizer, grads, variables):
    """optimizer.apply on TensorFlow; on JAX the jitted stateless_apply that model.fit uses (eager JAX would
    compile every small op separately, which takes minutes for a whole NFNet)."""
    if keras.backend.backend() != "jax":
        optimizer.apply(grads, variables)
        return
    import jax

    if not optimizer.built:
        optimizer.build(variables)
    assert [id(v) for v in variables] == [id(v) for v in compat.optimizer_trainable_variables(optimizer)]
    step = _JITTED.setdefault(id(optimizer), (optimizer, jax.jit(optimizer.stateless_apply)))[1]
    new_trainable, new_state = step([v.value for v in optimizer.variables], list(grads),
                                    [v.value for v in variables])
    for v, value in zip(variables, new_trainable):
        v.assign(value)
    for v, value in zip(optimizer.variables, new_state):
        v.assign(value)


_JITTED = {}


def mirrored_strategy():
    """MirroredStrategy over the two logical CPUs, with its own collective group key.

    TensorFlow caches collective parameters per (group key, instance key) for the whole process, and every
    MirroredStrategy starts from the same keys, so two strategies in one test process whose all-reduces differ in
    shape fail ("Shape mismatch in the collective instance 100"). TensorFlow's own tests move the strategies'
    collective-key base on; so do these.
    """
    import tensorflow as tf

    compat.advance_collective_keys()
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


class GradientRecorder(keras.optimizers.Optimizer):
    """An inner optimizer that writes the gradient it receives into the variable, so tests can read it back."""

    def __init__(self, **kwargs):
        super().__init__(learning_rate=1.0, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        self.assign(variable, gradient)


class Scalar(keras.layers.Layer):
    def build(self, input_shape):
        self.skip_gain = self.add_weight(shape=(), initializer="ones", name="skip_gain")

    def call(self, x):
        return x * self.skip_gain


def scalar(x):
    return float(keras.ops.convert_to_numpy(x))


def every_kernel_kind_model():
    inp = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, name="conv")(inp)
    x = keras.layers.Conv2D(8, 3, groups=4, name="grouped_conv")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2DTranspose(4, 2, name="transpose")(x)
    x = keras.layers.Reshape((-1, 4))(x)
    x = keras.layers.Conv1D(6, 3, name="conv1d")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = Scalar(name="block")(x)
    x = keras.layers.Dense(5, name="dense")(x)
    out = keras.layers.Dense(3, name="classifier")(x)
    return keras.Model(inp, out)


# Independent statement of the unit layout of each kernel kind (what a unit is), used by the numpy reference.
EXPECTED_AXES = {
    "conv/kernel": (0, 1, 2),           # (kh, kw, in, out): one unit per output channel
    "grouped_conv/kernel": (0, 1, 2),   # (kh, kw, in/groups, out)
    "depthwise/kernel": (0, 1),         # (kh, kw, in, multiplier): one unit per (in, multiplier)
    "transpose/kernel": (0, 1, 3),      # (kh, kw, out, in): one unit per output channel (axis 2)
    "conv1d/kernel": (0, 1),            # (k, in, out)
    "dense/kernel": (0,),               # (in, out)
    "classifier/kernel": (0,),
}


def random_gradients(variables, clip_factor, rng):
    """Gradients whose unit norms span 1e-3x .. 10x the clipping threshold, so some units clip and some don't."""
    grads = []
    for v in variables:
        w = keras.ops.convert_to_numpy(v)
        g = rng.normal(size=w.shape).astype(np.float32)
        scale = 10.0 ** rng.uniform(-3, 1, size=w.shape[-1:] if w.ndim >= 1 else ())
        grads.append((g * scale * clip_factor).astype(np.float32))
    return grads


@pytest.mark.parametrize("clip_factor", [0.01, 0.16])
def test_agc_matches_numpy_for_every_kernel_kind(clip_factor):
    rng = np.random.default_rng(0)
    model = every_kernel_kind_model()
    variables = model.trainable_variables
    # Non-zero biases so parameter norms are not all at the eps floor; one bias stays zero to exercise eps.
    for v in variables:
        if v.path.endswith("bias") and not v.path.startswith("dense"):
            v.assign(rng.normal(size=v.shape).astype(np.float32))
    params = [keras.ops.convert_to_numpy(v).copy() for v in variables]
    grads = random_gradients(variables, clip_factor, rng)

    agc = AGC(GradientRecorder(), clip_factor=clip_factor, eps=1e-3, exclude=None,
              unit_axes=unit_axes_for_model(model))
    apply_gradients(agc, [keras.ops.convert_to_tensor(g) for g in grads], variables)

    clipped_units = total_units = 0
    kinds_seen = set()
    for v, p, g in zip(variables, params, grads):
        axes = EXPECTED_AXES.get(v.path)  # vectors and scalars: None (whole tensor)
        if axes is None:
            assert p.ndim <= 1, v.path
        expected, n_clipped, n_units = numpy_agc(g, p, clip_factor, 1e-3, axes)
        clipped_units += n_clipped
        total_units += n_units
        kinds_seen.add(v.path.split("/")[0])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), expected, rtol=2e-6, atol=1e-9, err_msg=v.path)
    assert {"conv", "grouped_conv", "depthwise", "transpose", "conv1d", "dense", "block"} <= kinds_seen
    # The test data exercises both branches of the formula.
    assert 0 < clipped_units < total_units
    np.testing.assert_allclose(scalar(agc.clipped_fraction), clipped_units / total_units, rtol=1e-6)
    before = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    np.testing.assert_allclose(scalar(agc.grad_norm), before, rtol=1e-5)
    after = np.sqrt(sum(np.sum(keras.ops.convert_to_numpy(v).astype(np.float64) ** 2) for v in variables))
    np.testing.assert_allclose(scalar(agc.clipped_grad_norm), after, rtol=1e-5)
    assert scalar(agc.clipped_grad_norm) < scalar(agc.grad_norm)


def test_default_exclude_leaves_only_classifier_kernel_unclipped():
    rng = np.random.default_rng(1)
    model = every_kernel_kind_model()
    variables = model.trainable_variables
    grads = [g * 1e3 for g in random_gradients(variables, 0.01, rng)]  # everything far over the threshold
    agc = AGC(GradientRecorder(), clip_factor=0.01, unit_axes=unit_axes_for_model(model))
    agc.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    assert list(agc.excluded_paths) == ["classifier/kernel"]
    for v, g in zip(variables, grads):
        unchanged = np.allclose(keras.ops.convert_to_numpy(v), g, rtol=1e-6)
        assert unchanged == (v.path == "classifier/kernel"), v.path


def test_callable_exclude_and_depthwise_warning():
    model = every_kernel_kind_model()
    agc = AGC(GradientRecorder(), exclude=lambda path: path.startswith("dense/"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agc.build(model.trainable_variables)
    assert sorted(agc.excluded_paths) == ["dense/bias", "dense/kernel"]
    assert any("depthwise" in str(w.message) for w in caught)


def test_iterations_and_learning_rate_are_the_inner_optimizers():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="classifier")])
    inner = keras.optimizers.SGD(0.5)
    agc = AGC(inner)
    agc.learning_rate = 0.25
    assert scalar(inner.learning_rate) == 0.25
    grads = [keras.ops.ones(v.shape) for v in model.trainable_variables]
    agc.apply(grads, model.trainable_variables)
    agc.apply(grads)
    assert scalar(agc.iterations) == 2 == scalar(inner.iterations)


@pytest.mark.parametrize("bad", [0, -0.01, float("nan"), float("inf"), "0.01", True])
def test_bad_clip_factor(bad):
    with pytest.raises(ValueError, match="clip_factor"):
        AGC(keras.optimizers.SGD(0.1), clip_factor=bad)


def test_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        AGC(keras.optimizers.SGD(0.1), eps=0.0)


@pytest.mark.parametrize("bad", ["sgd", keras.optimizers.SGD, None, keras.layers.Dense(2)])
def test_wrapping_a_non_optimizer(bad):
    with pytest.raises(ValueError, match="keras.optimizers.Optimizer"):
        AGC(bad)


def test_exclude_that_matches_nothing():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
    agc = AGC(keras.optimizers.SGD(0.1))  # default exclude names a `classifier` layer, absent here
    with pytest.raises(ValueError, match="matches none of the 2 trainable variables.*head/kernel"):
        agc.build(model.trainable_variables)
    with pytest.raises(ValueError, match="matches none"):
        AGC(keras.optimizers.SGD(0.1), exclude=r"nothing_like_this").build(model.trainable_variables)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="regular expression"):
        AGC(keras.optimizers.SGD(0.1), exclude="(")
    with pytest.raises(ValueError, match="exclude must be"):
        AGC(keras.optimizers.SGD(0.1), exclude=3)
    with pytest.raises(ValueError, match="LossScaleOptimizer"):
        AGC(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        AGC(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))
    with pytest.raises(ValueError, match="weight_decay"):
        AGC(keras.optimizers.SGD(0.1), weight_decay=1e-4)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="classifier")])
    kernel_path = model.trainable_variables[0].path
    with pytest.raises(ValueError, match="out of range"):
        AGC(keras.optimizers.SGD(0.1), unit_axes={kernel_path: (0, 2)}).build(model.trainable_variables)
    with pytest.raises(ValueError, match="not being trained"):
        AGC(keras.optimizers.SGD(0.1), unit_axes={"missing/kernel": (0,)}).build(model.trainable_variables)


def test_loss_scale_factor_of_the_inner_optimizer_is_undone_before_clipping():
    rng = np.random.default_rng(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="classifier")])
    variables = model.trainable_variables
    params = [keras.ops.convert_to_numpy(v).copy() for v in variables]
    grads = random_gradients(variables, 0.05, rng)
    agc = AGC(GradientRecorder(loss_scale_factor=64.0), clip_factor=0.05, exclude=None)
    assert scalar(agc.scale_loss(keras.ops.convert_to_tensor(1.0))) == 64.0
    apply_gradients(agc, [keras.ops.convert_to_tensor(g * 64.0) for g in grads], variables)
    for v, p, g, axes in zip(variables, params, grads, [(0,), None]):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), numpy_agc(g, p, 0.05, 1e-3, axes)[0],
                                   rtol=2e-6, atol=1e-9)
