"""Every private Keras, TensorFlow and tf-models-official API that keras_nfnet uses, in one place.

None of these is a public API, so an upgrade may change any of them without notice. tests/test_compat.py has
one test per entry of PRIVATE_CALLS that fails naming the call and the installed versions, and checks that no
other module of the package reaches into library internals. At run time a missing private attribute raises
PrivateAPIChanged (naming the call and the versions) instead of an AttributeError deep inside a traced step.

Every library is imported on first use only: the models, AGC and EMA also run on JAX (no TensorFlow), and the
model server runs without Keras.
"""

# The versions the test suite passed on; setup.py accepts these.
TESTED_WITH = "keras 3.15, tensorflow 2.20"

PRIVATE_CALLS = {
    "no_automatic_dependency_tracking": "keras.src.utils.tracking.no_automatic_dependency_tracking",
    "flatten_layers": "keras.layers.Layer._flatten_layers",
    "gradient_sum_guard": "keras TF optimizer ._all_reduce_sum_gradients",
    "optimizer_strategy": "keras TF optimizer ._distribution_strategy",
    "variable_index": "keras.optimizers.Optimizer._get_variable_index",
    "own_variables": "keras.optimizers.Optimizer._variables",
    "optimizer_trainable_variables": "keras.optimizers.Optimizer._trainable_variables",
    "ema_averages": "keras.optimizers.Optimizer._model_variables_moving_average",
    "overwrites_with_gradient": "keras.optimizers.Optimizer._overwrite_variable_with_gradient",
    "ema_hooks": "keras.optimizers.Optimizer._update_model_variables_moving_average and "
                 "._overwrite_model_variables_with_average_value",
    "unscale_loss_for_distribution": "keras.src.losses.loss.unscale_loss_for_distribution",
    "merge_call": "tf.__internal__.distribute.interim.maybe_merge_call",
    "call_has_training_arg": "keras.Model._call_has_training_arg",
    "compute_loss": "keras.Model._compute_loss",
    "loss_tracker": "keras.Model._loss_tracker",
    "symbolic_build": "keras.Model._symbolic_build and ._maybe_symbolic_build",
    "advance_collective_keys": "tf.distribute.MirroredStrategy._collective_key_base",
    "fill_rectangle": "official.vision.ops.augment._fill_rectangle",
    "saved_model_proto": "tensorflow.core.protobuf.saved_model_pb2",
}


class PrivateAPIChanged(RuntimeError):
    """A private library API that keras_nfnet relies on is not what it was when the package was tested."""


def installed_versions():
    """'keras X, tensorflow Y' for the libraries installed now."""
    import keras

    try:
        import tensorflow as tf

        tf_version = tf.__version__
    except ImportError:
        tf_version = "not installed"
    return f"keras {keras.__version__}, tensorflow {tf_version}"


def _private(obj, name, call):
    try:
        return getattr(obj, name)
    except AttributeError:
        raise PrivateAPIChanged(
            f"{PRIVATE_CALLS[call]} is gone (installed: {installed_versions()}; keras_nfnet was tested with "
            f"{TESTED_WITH}); see keras_nfnet/compat.py.") from None


# --- Keras tracking ------------------------------------------------------------------------------------------

def no_automatic_dependency_tracking(method):
    """Decorator: attributes set inside `method` are not tracked as Keras state (LossScaleOptimizer.build does the
    same); AGC keeps plain Python lists of its per-variable plan."""
    from keras.src.utils import tracking

    return tracking.no_automatic_dependency_tracking(method)


def flatten_layers(layer, include_self=True, recursive=True):
    """Every layer inside `layer` (nested models included), in Keras's own order."""
    return list(_private(layer, "_flatten_layers", "flatten_layers")(include_self=include_self,
                                                                       recursive=recursive))


# --- Optimizer internals -------------------------------------------------------------------------------------

def install_gradient_sum_guard(optimizer, skip):
    """Make `optimizer` (TF backend) skip its own cross-replica gradient sum while `skip()` is true.

    Keras's TF optimizer sums gradients across replicas inside its update step through
    `_all_reduce_sum_gradients`; there is no public switch for "these are already summed". The method is
    wrapped on this one instance, once. Returns False when the optimizer has no such step (other backends).
    """
    original = getattr(optimizer, "_all_reduce_sum_gradients", None)
    if original is None:
        return False
    if getattr(original, "_keras_nfnet_sum_guard", False):
        return True

    def guarded(grads_and_vars):
        if skip():
            return list(grads_and_vars)
        return original(grads_and_vars)

    guarded._keras_nfnet_sum_guard = True
    object.__setattr__(optimizer, "_all_reduce_sum_gradients", guarded)
    return True


def optimizer_strategy(optimizer):
    """The tf.distribute strategy `optimizer` was created under (TF backend)."""
    return _private(optimizer, "_distribution_strategy", "optimizer_strategy")


def variable_index(optimizer, variable):
    """Position of `variable` in the list `optimizer` was built with (indexes per-variable slots)."""
    return _private(optimizer, "_get_variable_index", "variable_index")(variable)


def own_variables(optimizer):
    """The variables `optimizer` created itself (iterations, slots), not those of wrapped optimizers."""
    return _private(optimizer, "_variables", "own_variables")


def optimizer_trainable_variables(optimizer):
    """The model variables `optimizer` was built with, in order."""
    return _private(optimizer, "_trainable_variables", "optimizer_trainable_variables")


def ema_averages(optimizer):
    """The weight averages of an optimizer built with use_ema=True (None for variables it does not average)."""
    return _private(optimizer, "_model_variables_moving_average", "ema_averages")


def has_ema_averages(optimizer):
    return hasattr(optimizer, "_model_variables_moving_average")


class ForwardEMAAverages:
    """Mixin for an optimizer wrapper with an `inner_optimizer`: exposes the inner optimizer's weight averages
    under the name keras.callbacks.SwapEMAWeights and Keras's fit loop look for."""

    @property
    def _model_variables_moving_average(self):
        return ema_averages(self.inner_optimizer)


def overwrites_with_gradient(optimizer, variable):
    """True for variables whose 'gradient' is their new value (Keras's overwrite_with_gradient); they get no
    optimizer slots."""
    return _private(optimizer, "_overwrite_variable_with_gradient", "overwrites_with_gradient")(variable)


class OptimizerEMAHooks:
    """Mixin (list it before the Keras optimizer class) that routes Keras's private weight-average hooks to
    public-named methods of the subclass:

    - `update_ema_averages(trainable_variables)`, called after every step when use_ema=True;
    - `write_ema_averages(trainable_variables)`, called when fit ends, to put the averages into the model.

    `keras_write_ema_averages` is Keras's own implementation of the second, for subclasses that keep it on some
    backends.
    """

    def _update_model_variables_moving_average(self, trainable_variables):
        return self.update_ema_averages(trainable_variables)

    def _overwrite_model_variables_with_average_value(self, trainable_variables):
        return self.write_ema_averages(trainable_variables)

    def keras_write_ema_averages(self, trainable_variables):
        return super()._overwrite_model_variables_with_average_value(trainable_variables)


# --- Model / trainer internals -------------------------------------------------------------------------------

def unscale_loss_for_distribution(value):
    """Undo the 1/num_replicas scaling of a per-replica loss, as Keras's train step does before reporting it."""
    from keras.src.losses import loss

    return loss.unscale_loss_for_distribution(value)


def call_has_training_arg(model):
    """Whether `model.call` takes a `training` argument."""
    return _private(model, "_call_has_training_arg", "call_has_training_arg")


def compute_loss(model, x, y, y_pred, sample_weight=None, training=True):
    """The compiled loss (plus regularisation losses), as Keras's train step computes it."""
    return _private(model, "_compute_loss", "compute_loss")(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)


def loss_tracker(model):
    """The Mean metric that reports `loss` in fit's logs."""
    return _private(model, "_loss_tracker", "loss_tracker")


def symbolic_build(model, data_batch):
    """Build `model`, its compiled metrics and optimizer from one batch (only shapes and dtypes are used)."""
    _private(model, "_symbolic_build", "symbolic_build")(data_batch=data_batch)


def replace_symbolic_build(model, build):
    """Make this `model` instance call `build(iterator=None, data_batch=None)` where fit would build it."""
    _private(model, "_maybe_symbolic_build", "symbolic_build")
    model._maybe_symbolic_build = build


# --- TensorFlow internals ------------------------------------------------------------------------------------

def merge_call(fn, *args):
    """Run `fn(strategy, *args)` once in the cross-replica context, from a replica or cross-replica context."""
    import tensorflow as tf

    interim = tf.__internal__.distribute.interim
    return _private(interim, "maybe_merge_call", "merge_call")(fn, tf.distribute.get_strategy(), *args)


def advance_collective_keys(step=100000):
    """Move the collective-key base that every MirroredStrategy of this process starts from, so that a new one
    does not reuse the keys of an earlier one (TensorFlow caches collective parameters per key)."""
    import tensorflow as tf

    base = _private(tf.distribute.MirroredStrategy, "_collective_key_base", "advance_collective_keys")
    tf.distribute.MirroredStrategy._collective_key_base = base + step


def fill_rectangle(image, center_x, center_y, half_width, half_height, replace):
    """tf-models-official's cutout fill: `image` with the rectangle around (center_x, center_y) set to replace."""
    from official.vision.ops import augment

    fill = _private(augment, "_fill_rectangle", "fill_rectangle")
    return fill(image, center_x, center_y, half_width, half_height, replace)


def saved_model_proto():
    """An empty SavedModel protocol buffer (to parse saved_model.pb; TensorFlow exports no public class)."""
    from tensorflow.core.protobuf import saved_model_pb2

    return saved_model_pb2.SavedModel()
