"""Losses of the NFNet recipes: softmax cross-entropy with label smoothing (single-label data such as ImageNet)
and sigmoid cross-entropy summed over classes (multi-label data such as the JFT-like corpus).

Both take logits and compute in float32 (logits may come from a bfloat16/float16 model).

Model code rule: keras.ops only.
"""
import numbers

import keras
from keras import ops


def _check_smoothing(label_smoothing):
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) or \
            not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1); received {label_smoothing!r}.")
    return float(label_smoothing)


@keras.saving.register_keras_serializable(package="keras_nfnet")
class SoftmaxCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy from logits with label smoothing (0.1 in the ImageNet recipe).

    Labels may be class indices, shape (batch,) or (batch, 1), or per-class targets of the logits' shape
    (one-hot, or the soft labels MixUp/CutMix produce). Smoothing mixes targets with the uniform distribution:
    t <- t * (1 - s) + s / num_classes. Class indices outside [0, num_classes) are an error in eager mode; inside
    a compiled step they would give an all-zero target, so validate labels in the input pipeline.
    """

    def __init__(self, label_smoothing=0.1, name="softmax_cross_entropy", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        num_classes = logits.shape[-1]
        targets = _dense_targets(y_true, logits, num_classes, "SoftmaxCrossEntropy")
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        return -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)

    def get_config(self):
        config = super().get_config()
        config["label_smoothing"] = self.label_smoothing
        return config


@keras.saving.register_keras_serializable(package="keras_nfnet")
class SigmoidCrossEntropy(keras.losses.Loss):
    """Independent sigmoid cross-entropy per class from logits, for multi-hot labels (batch, num_classes).

    Per example the class losses are summed (`class_reduction="sum"`, as JFT pretraining code does, so the
    gradient does not shrink as the number of classes grows) or averaged (`"mean"`, like
    keras.losses.BinaryCrossentropy); then the batch is reduced by `reduction`.
    """

    def __init__(self, class_reduction="sum", label_smoothing=0.0, name="sigmoid_cross_entropy",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if class_reduction not in ("sum", "mean"):
            raise ValueError(f"class_reduction must be 'sum' or 'mean'; received {class_reduction!r}.")
        self.class_reduction = class_reduction
        self.label_smoothing = _check_smoothing(label_smoothing)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        targets = ops.cast(y_true, "float32")
        if tuple(targets.shape[1:]) != tuple(logits.shape[1:]):
            raise ValueError(
                f"SigmoidCrossEntropy needs multi-hot labels of the logits' shape {tuple(logits.shape)}; received "
                f"labels of shape {tuple(targets.shape)}."
            )
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        # Stable form of -t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x)).
        per_class = ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
        if self.class_reduction == "sum":
            return ops.sum(per_class, axis=-1)
        return ops.mean(per_class, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"class_reduction": self.class_reduction, "label_smoothing": self.label_smoothing})
        return config


def _dense_targets(y_true, logits, num_classes, who):
    rank, logit_rank = len(y_true.shape), len(logits.shape)
    if rank == logit_rank and y_true.shape[-1] == num_classes and num_classes != 1:
        return ops.cast(y_true, "float32")
    if rank == logit_rank and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
        rank -= 1
    if rank != logit_rank - 1:
        raise ValueError(
            f"{who}: labels must be class indices of shape {tuple(logits.shape[:-1])} or targets of shape "
            f"{tuple(logits.shape)}; received labels of shape {tuple(y_true.shape)}."
        )
    indices = ops.cast(y_true, "int32")
    if not _is_symbolic(indices):
        values = ops.convert_to_numpy(indices)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{who}: class indices must be in [0, {num_classes}); received values from {values.min()} to "
                f"{values.max()}."
            )
    return ops.one_hot(indices, num_classes, dtype="float32")


def _is_symbolic(x):
    """True inside a compiled step (tf.function graph, JAX trace), where values cannot be inspected."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    if backend == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    return False


def recipe_loss(multi_label, label_smoothing=0.0, reduction="sum_over_batch_size"):
    """The loss the NFNet recipes train and evaluate with: sigmoid cross-entropy summed over classes for
    multi-label corpora (JFT-style pretraining), softmax cross-entropy otherwise. `reduction=None` gives the
    per-example loss (held-out evaluation weighs out padding rows itself)."""
    if multi_label:
        return SigmoidCrossEntropy(class_reduction="sum", label_smoothing=label_smoothing, reduction=reduction)
    return SoftmaxCrossEntropy(label_smoothing=label_smoothing, reduction=reduction)
