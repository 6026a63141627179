"""Sharpness-Aware Minimisation (Foret et al. 2021) as a train-step wrapper for a compiled Keras model.

SAM needs two gradients per step: g at the weights w, then the gradient at w + e with e = rho * g / ||g||, which
is the one the optimizer applies (to w, not w + e). An optimizer cannot compute a second gradient, so SAM wraps
the train step:

    model.compile(optimizer=AGC(SGD(...)), loss=...)
    enable_sam(model, rho=0.05)      # before model.fit; composes with keras_workarounds.apply in either order
    model.fit(...)

Composition: the second gradient goes through `model.optimizer.apply_gradients` unchanged, so AGC clips it (after
its own cross-replica sum) and weight decay, momentum and EMA act as usual: SAM -> AGC -> SGD, the NFNet
fine-tuning recipe (NFNET_SPEC.md section 4). Under tf.distribute, `reduction="global"` (default) all-reduces the
first gradient, so every replica takes the same ascent step and a run equals a single-device run on the same
global batch; `reduction="local"` perturbs each replica with its own gradient (the per-accelerator "m-sharpness"
of the SAM paper). The loss and metrics reported are those at w (the first pass), comparable with plain training.

TensorFlow backend only (the trainer's backend): it uses tf.GradientTape and tf.distribute.
"""
import keras
import tensorflow as tf

from keras_nfnet import compat

REDUCTIONS = ("global", "local")
_NORM_FLOOR = 1e-12


def _distributed_add(pairs, sign):
    """w += sign * e for each (e, w), on every replica's copy, from a replica or cross-replica context."""

    def add(strategy, pairs):
        for e, variable in pairs:
            strategy.extended.update(variable, lambda v, d: v.assign_add(sign * tf.cast(d, v.dtype)), args=(e,),
                                     group=False)

    compat.merge_call(add, pairs)


def sam_train_step(model, data, rho, reduction="global"):
    """One SAM step of a compiled `model` on `data` (x, y[, sample_weight]); returns the metric results."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    variables = model.trainable_variables
    tf_variables = [v.value for v in variables]

    def forward():
        y_pred = model(x, training=True) if compat.call_has_training_arg(model) else model(x)
        loss = compat.compute_loss(model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        return y_pred, loss

    with tf.GradientTape() as tape:
        y_pred, loss = forward()
        # The first loss is the one reported: the loss at the current weights.
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        compat.loss_tracker(model).update_state(compat.unscale_loss_for_distribution(loss), sample_weight=batch)
        scaled = model.optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, variables)
    grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, tf_variables)]
    ctx = tf.distribute.get_replica_context()
    if reduction == "global" and ctx is not None and ctx.num_replicas_in_sync > 1:
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    norm = tf.linalg.global_norm([tf.cast(g, tf.float32) for g in grads])
    # A non-finite norm (an overflow under loss scaling) means no ascent step; the loss-scale optimizer then
    # skips the update itself.
    factor = tf.where(tf.math.is_finite(norm), rho / tf.maximum(norm, _NORM_FLOOR), 0.0)
    epsilons = [tf.cast(g, tf.float32) * factor for g in grads]

    _distributed_add(list(zip(epsilons, tf_variables)), 1.0)
    with tf.GradientTape() as tape:
        _, perturbed_loss = forward()
        perturbed_loss = model.optimizer.scale_loss(perturbed_loss)
    sharp_grads = tape.gradient(perturbed_loss, variables)
    _distributed_add(list(zip(epsilons, tf_variables)), -1.0)

    model.optimizer.apply_gradients(zip(sharp_grads, variables))
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def enable_sam(model, rho=0.05, reduction="global"):
    """Make `model.fit` take SAM steps with radius `rho` (the paper's fine-tuning value is 0.05).

    Call after `model.compile` and before the first `fit` (the train function is traced then, around whatever
    `model.train_step` is at that moment; compiling again keeps the SAM step). Returns the model.
    """
    if getattr(model, "optimizer", None) is None:
        raise ValueError("enable_sam needs a compiled model (call model.compile first).")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise ValueError(f"rho must be a number > 0 (the SAM neighbourhood radius, e.g. 0.05); got {rho!r}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}.")
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"enable_sam supports the TensorFlow backend only; this is {keras.backend.backend()}.")
    model.train_step = lambda data: sam_train_step(model, data, float(rho), reduction)
    model.sam_rho = float(rho)
    return model
