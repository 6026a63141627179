"""Exponential moving average of the weights with the NFNet decay warm-up.

The paper averages weights with decay min(max_decay, (1 + t) / (10 + t)) (max_decay 0.99999 for ImageNet), so
the average follows the weights closely early on and becomes a long average later. Keras's own optimizer EMA
(`use_ema=True`) uses a fixed `ema_momentum`; `EMAWarmup` keeps Keras's machinery (averages stored and saved
with the optimizer, `keras.callbacks.SwapEMAWeights` for evaluation, the model holding the averages after
`fit` ends) and changes only the decay and the initial value of the average (the initial weights, as in the
reference, instead of zeros).

Model code rule: keras.ops only.
"""
import contextlib

import keras
from keras import ops

from keras_nfnet import compat


def ema_decay(step, max_decay=0.99999):
    """The decay used for the update after `step` completed steps: min(max_decay, (1 + step) / (10 + step))."""
    step = ops.cast(step, "float32")
    return ops.minimum(ops.cast(max_decay, "float32"), (1.0 + step) / (10.0 + step))


class EMAWarmup(compat.OptimizerEMAHooks):
    """Mixin for a `keras.optimizers.Optimizer` subclass: `use_ema=True` averages use the NFNet decay warm-up.

    List it before the Keras optimizer base class. `ema_momentum` is the maximum decay. The decay for an update
    is `ema_decay(t, ema_momentum)` where t counts the steps completed before it (0 on the first update).
    """

    def add_optimizer_variables(self, trainable_variables, name, initializer="zeros"):
        if name != "average" or not self.use_ema:
            return super().add_optimizer_variables(trainable_variables, name, initializer)
        # The reference starts the average at the initial weights (Keras starts it at zeros). This goes through
        # the initializer, not an assign after creation: model.fit may build the optimizer while tracing the
        # train step, where an assign would become part of the step and reset the averages every step.
        return [
            None if compat.overwrites_with_gradient(self, v)
            else self.add_variable_from_reference(v, name="average", initializer=_ValueOf(v))
            for v in trainable_variables
        ]

    def write_ema_averages(self, trainable_variables):
        if keras.backend.backend() == "tensorflow":
            return self.keras_write_ema_averages(trainable_variables)
        # Keras assigns the average's own array to the weight; on JAX the two then share one buffer and the next
        # jitted step, which donates both, fails ("Attempt to donate the same buffer twice"). Assign a copy.
        for variable, average in zip(trainable_variables, compat.ema_averages(self)):
            if average is not None:
                variable.assign(ops.copy(average))

    def update_ema_averages(self, trainable_variables):
        if not self.use_ema:
            return
        decay = ema_decay(self.iterations, self.ema_momentum)
        for variable, average in zip(trainable_variables, compat.ema_averages(self)):
            if average is not None:
                d = ops.cast(decay, variable.dtype)
                average.assign(d * average + (1.0 - d) * variable)


class _ValueOf(keras.initializers.Initializer):
    """Initializer returning a copy of a variable's current value (read eagerly on TensorFlow)."""

    def __init__(self, variable):
        self.variable = variable

    def __call__(self, shape, dtype=None):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.init_scope():
                return tf.identity(tf.cast(self.variable.value, dtype))
        # A copy, so that on JAX the average never shares the weight's buffer (the trainer donates both).
        return ops.copy(ops.cast(self.variable.value, dtype))


def find_ema_optimizer(optimizer):
    """The optimizer that holds the weight averages, looking through wrappers (LossScaleOptimizer, AGC)."""
    seen = optimizer
    while seen is not None:
        if getattr(seen, "use_ema", False) and compat.has_ema_averages(seen) and \
                not hasattr(seen, "inner_optimizer"):
            return seen
        seen = getattr(seen, "inner_optimizer", None)
    return None


@contextlib.contextmanager
def ema_weights(model, optimizer=None):
    """Temporarily put the EMA weights into `model` (for evaluation or export); the training weights come back
    on exit, even after an error.

        with ema_weights(model):
            model.export(path)

    Raises ValueError when the optimizer keeps no averages (create it with use_ema=True) or is not built.
    """
    optimizer = optimizer if optimizer is not None else model.optimizer
    holder = find_ema_optimizer(optimizer)
    if holder is None:
        raise ValueError(
            f"{type(optimizer).__name__} keeps no weight averages: create the optimizer that applies the updates "
            "with use_ema=True (for example CoupledDecaySGD(..., use_ema=True, ema_momentum=0.99999))."
        )
    if not holder.built:
        raise ValueError("The optimizer has not been built yet, so it has no weight averages to swap in.")
    pairs = [(v, a) for v, a in zip(compat.optimizer_trainable_variables(holder), compat.ema_averages(holder))
             if a is not None]
    saved = [ops.convert_to_numpy(v) for v, _ in pairs]
    for variable, average in pairs:
        variable.assign(ops.convert_to_numpy(average))
    try:
        yield model
    finally:
        for (variable, _), value in zip(pairs, saved):
            variable.assign(value)
