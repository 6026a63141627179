"""CoupledDecaySGD and AGC(CoupledDecaySGD) against a numpy re-implementation of NFNET_SPEC section 3.

Backend-agnostic: tests/test_agc_jax.py runs this file again under KERAS_BACKEND=jax.
"""
import math

import keras
import numpy as np
import pytest

from keras_nfnet.agc import AGC
from keras_nfnet.models import NFNet
from keras_nfnet.optimizers import CoupledDecaySGD, nfnet_optimizer
from keras_nfnet.schedules import warmup_cosine
from tests.test_agc import apply_gradients, numpy_agc


def numpy_lr(step, peak, total, warmup):
    """Linear warmup then cosine to zero, written out independently."""
    if step < warmup:
        return peak * step / warmup
    step = min(step, total)
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def numpy_nfnet_step(params, momenta, grads, lr, clip, decay, clip_factor, wd, mu=0.9, axes=None):
    """One NFNet update: AGC, then g += wd * p, m = mu m + g, p -= lr (g + mu m) (Nesterov)."""
    new_params, new_momenta = [], []
    for i, (p, m, g) in enumerate(zip(params, momenta, grads)):
        p = p.astype(np.float64)
        g = g.astype(np.float64)
        if clip[i]:
            g = numpy_agc(g, p, clip_factor, 1e-3, axes[i])[0]
        if decay[i]:
            g = g + wd * p
        m = mu * m + g
        new_params.append(p - lr * (g + mu * m))
        new_momenta.append(m)
    return new_params, new_momenta


def rank_axes(p):
    return None if p.ndim <= 1 else tuple(range(p.ndim - 1))


def gradients(model, x, y):
    """d(softmax cross-entropy)/d(trainable variables), on whichever backend is active."""
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)
    import jax

    def loss_of(trainable, non_trainable, x, y):
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, logits)

    # jit once per model: op-by-op differentiation of a whole NFNet is very slow on JAX.
    grad_fn = _GRAD_FNS.setdefault(id(model), (model, jax.jit(jax.grad(loss_of))))[1]
    return grad_fn([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
                   x, y)


_GRAD_FNS = {}


def tiny_nfnet():
    keras.utils.set_random_seed(0)
    return NFNet("tiny", num_classes=5, stochastic_depth_rate=0.0, dropout_rate=0.0, input_shape=(32, 32, 3))


def test_coupled_decay_sgd_matches_numpy_with_changing_learning_rate():
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    variables = model.trainable_variables
    schedule = warmup_cosine(0.1, 512, total_steps=6, warmup_steps=2)  # peak 0.2, lr changes every step
    opt = CoupledDecaySGD(schedule, momentum=0.9, weight_decay=0.05)
    params = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables]
    momenta = [np.zeros_like(p) for p in params]
    decay = [v.path.endswith("kernel") for v in variables]
    for step in range(6):
        grads = [rng.normal(size=p.shape).astype(np.float32) for p in params]
        opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        params, momenta = numpy_nfnet_step(params, momenta, grads, numpy_lr(step, 0.2, 6, 2),
                                           clip=[False] * 2, decay=decay, clip_factor=None, wd=0.05)
        for v, p in zip(variables, params):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(v), p, rtol=1e-5, atol=1e-6)


def test_plain_momentum_and_no_momentum():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False, name="d")])
    v = model.trainable_variables[0]
    v.assign(np.ones((2, 1), np.float32))
    g = keras.ops.ones((2, 1))
    heavy_ball = CoupledDecaySGD(0.1, momentum=0.5, nesterov=False, weight_decay=0.0)
    heavy_ball.apply([g], [v])
    heavy_ball.apply([g], [v])  # m = 1, then 1.5: p = 1 - 0.1 - 0.15
    np.testing.assert_allclose(keras.ops.convert_to_numpy(v), np.full((2, 1), 0.75), rtol=1e-6)
    v.assign(np.ones((2, 1), np.float32))
    plain = CoupledDecaySGD(0.1, momentum=0.0, weight_decay=0.5)
    plain.apply([g], [v])  # p = 1 - 0.1 * (1 + 0.5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(v), np.full((2, 1), 0.85), rtol=1e-6)


def test_default_decay_filter_on_nfnet_is_conv_se_and_classifier_kernels():
    model = tiny_nfnet()
    opt = CoupledDecaySGD(0.1, weight_decay=2e-5)
    opt.build(model.trainable_variables)
    decayed = set(opt.decayed_paths)
    paths = [v.path for v in model.trainable_variables]
    assert decayed == {p for p in paths if p.endswith("/kernel")}
    assert "classifier/kernel" in decayed and "stage0_block0/se/fc0/kernel" in decayed
    assert "stem_conv0/kernel" in decayed and "final_conv/kernel" in decayed
    assert not any(p.endswith(("gain", "bias")) for p in decayed)  # gains, biases, skip gains


def test_five_agc_nesterov_steps_on_tiny_nfnet_match_numpy():
    model = tiny_nfnet()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 5, size=4), 5).astype(np.float32)
    variables = model.trainable_variables
    peak, total, warmup, wd, clip_factor = 0.1 * 64 / 256, 10, 2, 1e-3, 0.01
    opt = AGC(CoupledDecaySGD(warmup_cosine(0.1, 64, total, warmup), weight_decay=wd), clip_factor=clip_factor)
    params = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables]
    initial = [p.copy() for p in params]
    momenta = [np.zeros_like(p) for p in params]
    clip = [v.path != "classifier/kernel" for v in variables]
    decay = [v.path.split("/")[-1] == "kernel" for v in variables]
    axes = [rank_axes(p) for p in params]
    for step in range(5):
        grads = [keras.ops.convert_to_numpy(g) for g in gradients(model, x, y)]
        apply_gradients(opt, [keras.ops.convert_to_tensor(g) for g in grads], variables)
        params, momenta = numpy_nfnet_step(params, momenta, grads, numpy_lr(step, peak, total, warmup),
                                           clip, decay, clip_factor, wd, axes=axes)
        assert 0.0 < float(keras.ops.convert_to_numpy(opt.clipped_fraction)) <= 1.0
        for v, p in zip(variables, params):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(v), p, rtol=1e-5, atol=1e-6, err_msg=v.path)
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 5
    # The update really moved the weights (the comparison above is not between two unchanged models).
    assert max(np.max(np.abs(keras.ops.convert_to_numpy(v) - p0)) for v, p0 in zip(variables, initial)) > 1e-3


def small_convnet():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(5, name="classifier"),
    ])


def test_fit_matches_the_step_by_step_update():
    """model.fit (stateless_apply under JAX, the TF train step under TF) takes the same steps as apply()."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 5, size=6), 5).astype(np.float32)

    def make_opt():
        return nfnet_optimizer(0.1, batch_size=64, total_steps=8, warmup_steps=2, weight_decay=1e-3)

    fitted = small_convnet()
    fitted.compile(optimizer=make_opt(), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    fitted.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)

    stepped = small_convnet()
    opt = make_opt()
    for i in range(3):
        grads = gradients(stepped, x[2 * i:2 * i + 2], y[2 * i:2 * i + 2])
        opt.apply(grads, stepped.trainable_variables)
    moved = 0.0
    for a, b, c in zip(fitted.trainable_variables, stepped.trainable_variables, small_convnet().trainable_variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   rtol=1e-5, atol=1e-6, err_msg=a.path)
        moved = max(moved, float(np.max(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(c)))))
    assert moved > 1e-3
    assert int(keras.ops.convert_to_numpy(fitted.optimizer.iterations)) == 3
    assert float(keras.ops.convert_to_numpy(fitted.optimizer.clipped_fraction)) > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        CoupledDecaySGD(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        CoupledDecaySGD(0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="decay_filter"):
        CoupledDecaySGD(0.1, decay_filter=7)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    with pytest.raises(ValueError, match="matches none"):
        CoupledDecaySGD(0.1, weight_decay=1e-4, decay_filter="^nothing$").build(model.trainable_variables)
    with pytest.raises(ValueError, match="total_steps"):
        nfnet_optimizer(0.1, 256)


def test_config_round_trip():
    opt = CoupledDecaySGD(warmup_cosine(0.1, 256, 100, 10), momentum=0.8, weight_decay=1e-5,
                          decay_filter="kernel$", use_ema=True, ema_momentum=0.999)
    clone = CoupledDecaySGD.from_config(opt.get_config())
    assert (clone.momentum, clone.nesterov, clone.coupled_weight_decay, clone.decay_filter) == \
        (0.8, True, 1e-5, "kernel$")
    assert clone.use_ema and clone.ema_momentum == 0.999
    assert clone.weight_decay is None  # Keras's decoupled decay stays off
    np.testing.assert_allclose(float(clone.learning_rate), float(opt.learning_rate))


def test_adamw_matches_numpy_with_clipping_decay_and_schedule():
    """The ViT baseline's optimizer: global-norm clip 1, decoupled decay p -= lr wd p, Adam with bias correction
    (Kingma & Ba; eps added to sqrt(v_hat)), peak base * batch / 256 on the cosine schedule."""
    from keras_nfnet.optimizers import adamw_optimizer

    rng = np.random.default_rng(0)
    params = [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")]
    grads = [[3.0 * rng.normal(size=p.shape).astype("float32") for p in params] for _ in range(5)]
    variables = [keras.Variable(p) for p in params]
    opt = adamw_optimizer(base_learning_rate=4e-3, batch_size=128, total_steps=8, warmup_steps=2,
                          weight_decay=0.1)
    opt.build(variables)
    ref, m, v = [p.astype(np.float64) for p in params], [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(grads, start=1):
        apply_gradients(opt, g, variables)
        norm = math.sqrt(sum(float((x.astype(np.float64) ** 2).sum()) for x in g))
        lr = numpy_lr(t - 1, 4e-3 * 128 / 256, 8, 2)
        for i, gi in enumerate(g):
            gi = gi.astype(np.float64) * min(1.0, 1.0 / norm)
            ref[i] = ref[i] - lr * 0.1 * ref[i]
            m[i] = 0.9 * m[i] + 0.1 * gi
            v[i] = 0.999 * v[i] + 0.001 * gi ** 2
            m_hat, v_hat = m[i] / (1 - 0.9 ** t), v[i] / (1 - 0.999 ** t)
            ref[i] = ref[i] - lr * m_hat / (np.sqrt(v_hat) + 1e-7)
    for var, want in zip(variables, ref):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(var), want, rtol=2e-5, atol=2e-6)
