"""Adaptive Gradient Clipping (Brock et al. 2021) as a wrapper around any Keras optimizer.

For every unit i of a parameter W with gradient G (a unit is one output channel of a kernel, or the whole tensor
for vectors and scalars):

    if ||G_i|| / max(||W_i||, eps) > clip_factor:
        G_i <- G_i * clip_factor * max(||W_i||, eps) / max(||G_i||, 1e-6)

`AGC` clips the gradient summed over all replicas. On the TensorFlow backend, Keras hands `Optimizer.apply()`
each replica's partial gradient and sums across replicas later, inside the inner optimizer's update. Clipping
there would clip partial gradients, which is a different (wrong) update. So `AGC` sums first, clips, and then
tells the inner optimizer that its gradients are already summed. On JAX there is no replica context: gradients
are global arrays, so the norms are already those of the full gradient.

Model code rule: keras.ops only (runs on TensorFlow and JAX); TensorFlow is touched only for tf.distribute.
"""
import contextlib
import math
import numbers
import re
import threading
import warnings

import keras
from keras import ops

from keras_nfnet import compat

# The classifier of a keras_nfnet NFNet is a Dense layer named "classifier"; the paper leaves only its kernel
# unclipped (its bias is clipped).
DEFAULT_EXCLUDE = r"(^|/)classifier/kernel$"

# Floor on ||G_i|| in the clipping ratio, as in the reference implementation.
_GRAD_NORM_FLOOR = 1e-6


def default_unit_axes(rank):
    """Axes to reduce for unit-wise norms, from the rank alone (Keras kernel layouts).

    Dense (in, out) -> (0,); Conv1D (k, in, out) -> (0, 1); Conv2D incl. grouped (kh, kw, in/g, out) ->
    (0, 1, 2); Conv3D -> (0, 1, 2, 3): every axis but the last, the output unit. Vectors and scalars (bias, gain,
    skip_gain) -> None, one norm over the whole tensor. Layouts where the output unit is not the last axis
    (DepthwiseConv, ConvTranspose) need an explicit entry: see `unit_axes_for_model`.
    """
    if rank <= 1:
        return None
    return tuple(range(rank - 1))


def unit_axes_for_model(model):
    """Unit-wise norm axes for kernels whose output units are not the last axis, keyed by variable path.

    Pass the result as `AGC(..., unit_axes=unit_axes_for_model(model))`. Covers DepthwiseConv1D/2D (kernel
    (k..., in, multiplier): a unit is one (in, multiplier) pair, so reduce the spatial axes), the depthwise
    kernel of SeparableConv1D/2D, and ConvXDTranspose (kernel (k..., out, in): reduce all but axis -2).
    Other kernels follow `default_unit_axes` and are not listed.
    """
    from keras import layers

    depthwise_types = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
    separable_types = (layers.SeparableConv1D, layers.SeparableConv2D)
    transpose_types = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
    result = {}
    for layer in compat.flatten_layers(model, include_self=False, recursive=True):
        if isinstance(layer, depthwise_types):
            kernels = [layer.kernel]
        elif isinstance(layer, separable_types):
            kernels = [layer.depthwise_kernel]
        elif isinstance(layer, transpose_types):
            rank = len(layer.kernel.shape)
            result[layer.kernel.path] = tuple(a for a in range(rank) if a != rank - 2)
            continue
        else:
            continue
        for kernel in kernels:
            result[kernel.path] = tuple(range(len(kernel.shape) - 2))
    return result


def unit_norm(x, axes):
    """L2 norm of each unit of `x`, keeping dims so it broadcasts against `x`; whole-tensor norm if axes is None."""
    if axes is None:
        return ops.sqrt(ops.sum(ops.square(x)))
    return ops.sqrt(ops.sum(ops.square(x), axis=axes, keepdims=True))


def adaptive_clip(grad, param, clip_factor, eps=1e-3, axes=None):
    """Clip one gradient tensor unit-wise. Returns (clipped_grad, number_of_units_clipped)."""
    grad = ops.cast(grad, "float32")
    param = ops.cast(param, "float32")
    max_norm = ops.maximum(unit_norm(param, axes), eps) * clip_factor
    grad_norm = unit_norm(grad, axes)
    clipped = grad * (max_norm / ops.maximum(grad_norm, _GRAD_NORM_FLOOR))
    over = ops.greater(grad_norm, max_norm)
    return ops.where(over, clipped, grad), ops.sum(ops.cast(over, "float32"))


def _path(variable):
    return getattr(variable, "path", None) or variable.name


def _exclude_predicate(exclude):
    if exclude is None:
        return lambda path: False
    if isinstance(exclude, str):
        pattern = re.compile(exclude)
        return lambda path: pattern.search(path) is not None
    return exclude


# Set while the inner optimizer applies gradients that AGC already summed across replicas. Thread-local because
# MirroredStrategy runs each replica's step in its own Python thread.
_already_summed = threading.local()


@contextlib.contextmanager
def _summed_scope():
    previous = getattr(_already_summed, "active", False)
    _already_summed.active = True
    try:
        yield
    finally:
        _already_summed.active = previous


def _replica_context_to_sum():
    """The TF replica context whose replicas' gradients must be summed before clipping, or None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    if tf.distribute.in_cross_replica_context():
        raise ValueError(
            "AGC.apply() must be called in a replica context (inside strategy.run or model.fit), not in the "
            "cross-replica context."
        )
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


@keras.saving.register_keras_serializable(package="keras_nfnet")
class AGC(compat.ForwardEMAAverages, keras.optimizers.Optimizer):
    """Adaptive Gradient Clipping around any Keras optimizer (SGD, Adam, AdamW, Lion, ...).

    Args:
        optimizer: the `keras.optimizers.Optimizer` that applies the clipped gradients. Create it (and AGC)
            inside `strategy.scope()` when training under a tf.distribute strategy.
        clip_factor: lambda, > 0. 0.01 for batch 1024-4096 in the paper; smaller batches tolerate more.
        eps: floor on parameter unit norms (so zero-initialised parameters can still move), > 0.
        exclude: which variables are not clipped: a regular expression searched in each variable's path, a
            callable `path -> bool`, or None to clip everything. The default excludes exactly the kernel of a
            layer named `classifier` (an NFNet's final Dense). A pattern that matches no variable is an error.
        unit_axes: optional `{variable_path: axes}` for kernels whose output unit is not the last axis (see
            `unit_axes_for_model`); every other variable uses `default_unit_axes`.

    Reported for TensorBoard after each step (float32 scalars; `agc.metrics()` returns them as a dict):
    `clipped_fraction` (clipped units / clippable units), `grad_norm` and `clipped_grad_norm` (global L2 norm of
    the summed, unscaled gradient before and after clipping, all variables included).

    Compose with mixed precision as `LossScaleOptimizer(AGC(...))`: the loss-scale optimizer unscales first.
    `iterations`, `learning_rate` (settable, so LR callbacks work) and Keras EMA (`use_ema` on the inner
    optimizer) are the inner optimizer's; keras.callbacks.SwapEMAWeights finds that EMA through
    LossScaleOptimizer(AGC(...)).
    """

    def __init__(self, optimizer, clip_factor=0.01, eps=1e-3, exclude=DEFAULT_EXCLUDE, unit_axes=None,
                 name=None, **kwargs):
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise ValueError(
                f"AGC wraps a keras.optimizers.Optimizer instance (for example keras.optimizers.SGD(0.1)); "
                f"received {optimizer!r} of type {type(optimizer).__name__}."
            )
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                "AGC must see unscaled gradients: wrap it the other way round, "
                "LossScaleOptimizer(AGC(inner_optimizer))."
            )
        if getattr(optimizer, "gradient_accumulation_steps", None):
            raise ValueError(
                "AGC clips the gradient of the whole batch, but the inner optimizer has "
                f"gradient_accumulation_steps={optimizer.gradient_accumulation_steps}, which would make AGC clip "
                "each micro-batch. Use a larger batch (or accumulate before AGC) instead."
            )
        _check_positive("clip_factor", clip_factor)
        _check_positive("eps", eps)
        if not (exclude is None or isinstance(exclude, str) or callable(exclude)):
            raise ValueError(
                f"exclude must be a regular expression (str), a callable path -> bool, or None; received {exclude!r}."
            )
        if isinstance(exclude, str):
            try:
                re.compile(exclude)
            except re.error as error:
                raise ValueError(f"exclude={exclude!r} is not a valid regular expression: {error}") from None
        unit_axes = {str(k): (None if v is None else tuple(int(a) for a in v)) for k, v in (unit_axes or {}).items()}

        # Base-optimizer options belong on the inner optimizer; only `name` is AGC's own.
        loss_scale_factor = kwargs.pop("loss_scale_factor", None)
        if kwargs:
            raise ValueError(
                f"AGC does not take {sorted(kwargs)}: set base-optimizer options (weight_decay, clipnorm, use_ema, "
                "...) on the inner optimizer instead."
            )
        if backend_is_tf():
            import tensorflow as tf

            if compat.optimizer_strategy(optimizer) is not tf.distribute.get_strategy():
                raise ValueError(
                    "The inner optimizer was created under a different tf.distribute strategy than AGC. Create "
                    "both inside the same `strategy.scope()`."
                )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.clip_factor = float(clip_factor)
        self.eps = float(eps)
        self.exclude = exclude
        self.unit_axes = unit_axes
        # A loss scale set on the inner optimizer moves here so that gradients are unscaled before clipping.
        if loss_scale_factor is None:
            loss_scale_factor = optimizer.loss_scale_factor
        optimizer.loss_scale_factor = None
        self.loss_scale_factor = loss_scale_factor
        # Keras's TF optimizer sums across replicas again in its update step; skip that for AGC's sums.
        compat.install_gradient_sum_guard(optimizer, lambda: getattr(_already_summed, "active", False))

    @compat.no_automatic_dependency_tracking
    def build(self, var_list):
        var_list = list(var_list)
        excluded = _exclude_predicate(self.exclude)
        plan = []
        matched = []
        for variable in var_list:
            path = _path(variable)
            rank = len(variable.shape)
            axes = self.unit_axes.get(path, default_unit_axes(rank))
            if axes is not None and any(a < 0 or a >= rank for a in axes):
                raise ValueError(
                    f"unit_axes[{path!r}]={axes} is out of range for a variable of shape {tuple(variable.shape)}."
                )
            if path not in self.unit_axes and rank >= 3 and "depthwise" in path:
                warnings.warn(
                    f"AGC: {path} looks like a depthwise kernel, whose output unit is not the last axis; pass "
                    "unit_axes=unit_axes_for_model(model) to clip it per unit.",
                    stacklevel=2,
                )
            skip = bool(excluded(path))
            if skip:
                matched.append(path)
            plan.append((not skip, axes))
        if self.exclude is not None and not matched:
            sample = ", ".join(_path(v) for v in var_list[:6])
            raise ValueError(
                f"AGC exclude={self.exclude!r} matches none of the {len(var_list)} trainable variables "
                f"(for example: {sample}). Pass exclude=None to clip every variable, or a pattern that names "
                "the variables to leave unclipped (an NFNet's classifier is a Dense layer named 'classifier')."
            )
        unknown = set(self.unit_axes) - {_path(v) for v in var_list}
        if unknown:
            raise ValueError(f"unit_axes names variables that are not being trained: {sorted(unknown)}.")
        self._clip_plan = plan
        self.excluded_paths = matched
        self.clipped_fraction = self.add_variable(
            shape=(), dtype="float32", aggregation="only_first_replica", name="agc_clipped_fraction")
        self.grad_norm = self.add_variable(
            shape=(), dtype="float32", aggregation="only_first_replica", name="agc_grad_norm")
        self.clipped_grad_norm = self.add_variable(
            shape=(), dtype="float32", aggregation="only_first_replica", name="agc_clipped_grad_norm")
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return compat.own_variables(self) + self.inner_optimizer.variables

    def metrics(self):
        """{'agc/clipped_fraction', 'agc/grad_norm', 'agc/clipped_grad_norm'} -> current values (after a step)."""
        if not self.built:
            raise ValueError("AGC has not applied any gradients yet (it is built on its first step).")
        return {
            "agc/clipped_fraction": self.clipped_fraction,
            "agc/grad_norm": self.grad_norm,
            "agc/clipped_grad_norm": self.clipped_grad_norm,
        }

    def clip_gradients(self, grads, trainable_variables):
        """Clip already-summed, unscaled gradients; returns (clipped, clipped_units, total_units, before, after)."""
        clipped_grads = []
        clipped_units = ops.zeros((), "float32")
        total_units = 0
        before = ops.zeros((), "float32")
        after = ops.zeros((), "float32")
        for grad, variable in zip(grads, trainable_variables):
            if grad is None:
                clipped_grads.append(None)
                continue
            do_clip, axes = self._clip_plan[compat.variable_index(self, variable)]
            grad32 = ops.cast(grad, "float32")
            before = before + ops.sum(ops.square(grad32))
            if do_clip:
                new_grad, n_clipped = adaptive_clip(grad32, variable, self.clip_factor, self.eps, axes)
                clipped_units = clipped_units + n_clipped
                shape = tuple(variable.shape)
                total_units += 1 if axes is None else math.prod(d for i, d in enumerate(shape) if i not in axes)
                grad32 = new_grad
            after = after + ops.sum(ops.square(grad32))
            clipped_grads.append(ops.cast(grad32, grad.dtype))
        return clipped_grads, clipped_units, total_units, ops.sqrt(before), ops.sqrt(after)

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            if trainable_variables is None:
                raise ValueError("AGC must be built before apply() is called without trainable_variables.")
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
            self.built = True
        if trainable_variables is None:
            variables = compat.optimizer_trainable_variables(self)
        else:
            variables = list(trainable_variables)
        grads = list(grads)
        if len(grads) != len(variables):
            raise ValueError(f"AGC.apply got {len(grads)} gradients for {len(variables)} variables.")
        if self.loss_scale_factor is not None:
            grads = [None if g is None else g / self.loss_scale_factor for g in grads]

        context = _replica_context_to_sum()
        if context is not None:
            import tensorflow as tf

            present = [i for i, g in enumerate(grads) if g is not None]
            summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
            for i, g in zip(present, summed):
                grads[i] = g

        with keras.name_scope(self.name, caller=self):
            clipped, n_clipped, n_units, before, after = self.clip_gradients(grads, variables)
            self.clipped_fraction.assign(n_clipped / max(n_units, 1))
            self.grad_norm.assign(before)
            self.clipped_grad_norm.assign(after)

        scope = _summed_scope() if context is not None else contextlib.nullcontext()
        with scope:
            self.inner_optimizer.apply(clipped, trainable_variables)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        if not self.built:
            raise ValueError("AGC must be built (optimizer.build(trainable_variables)) before stateless_apply.")
        return super().stateless_apply(optimizer_variables, grads, trainable_variables)

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        exclude = self.exclude
        if callable(exclude):
            exclude = keras.saving.serialize_keras_object(exclude)
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "clip_factor": self.clip_factor,
            "eps": self.eps,
            "exclude": exclude,
            "unit_axes": {k: (None if v is None else list(v)) for k, v in self.unit_axes.items()},
            "loss_scale_factor": self.loss_scale_factor,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(config.pop("optimizer"), custom_objects=custom_objects)
        if isinstance(config.get("exclude"), dict):
            config["exclude"] = keras.saving.deserialize_keras_object(
                config["exclude"], custom_objects=custom_objects)
        return cls(optimizer, **config)


def backend_is_tf():
    return keras.backend.backend() == "tensorflow"


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; received {name}={value!r}.")
