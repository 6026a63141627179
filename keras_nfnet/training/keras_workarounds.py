"""Every patch that Keras 3 (checked with 3.15 on TensorFlow 2.20) needs to run `model.fit` under tf.distribute.

Each workaround names what it answers upstream and is exercised by tests/test_training_workarounds.py, so it can be
deleted as soon as upstream is fixed (the tests then show whether stock Keras passes). Patches are applied to one
model instance, never to Keras classes, so other models in the same process are untouched.

1. STEP_LOOP: under MirroredStrategy with its default collective all-reduce (what GPUs and logical CPU devices
   get), `steps_per_execution > 1` fails with "You must feed a value for placeholder tensor
   '.../while/cond/Placeholder'" (Keras' multi-step loop puts `strategy.run` inside a `tf.cond` over
   `tf.experimental.Optional` values; with `ReductionToOneDevice` stock Keras happens to work). Same symptom family as keras-team/keras#19246. Under
   MultiWorkerMirroredStrategy the stock reduction of the step's outputs also fails, because
   `reduce_per_replica` reduces scalars "along axis 0" (keras-team/keras#20585). Fix: our own train function,
   `strategy.run(train_step)` inside a `tf.range` loop in one `tf.function`, outputs reduced with
   `strategy.reduce(MEAN, axis=None)`. Needs an endless input (the training stream repeats), which is what
   `model.fit(steps_per_epoch=...)` over the exactly-once pipeline gives.
2. SYMBOLIC_BUILD: under MultiWorkerMirroredStrategy, `model.fit` first "symbolically builds" the model from one
   batch and reduces that PerReplica batch with a cross-worker MEAN, which fails with "Attempt to convert a value
   (PerReplica...) to a Tensor" (keras-team/keras#20585). Fix: build from the first local replica's batch (only
   shapes and dtypes matter).
3. JIT_ON_LOGICAL_CPUS: `jit_compile=True` under a MirroredStrategy over several logical CPU devices fails with
   "Trying to access resource .../replica_1/... located in device CPU:1 from device CPU:0" (XLA compiles for one
   CPU device; https://www.tensorflow.org/xla/known_issues#tfvariable_on_a_different_device). Logical CPU replicas
   exist for testing only, so jit is turned off there with a warning; on GPUs and TPUs the request is honoured.
"""
import logging

import tensorflow as tf
from keras import tree

from keras_nfnet import compat

log = logging.getLogger(__name__)

STEP_LOOP = "step_loop"
SYMBOLIC_BUILD = "symbolic_build"
JIT_ON_LOGICAL_CPUS = "jit_on_logical_cpus"

UPSTREAM = {
    STEP_LOOP: "keras-team/keras#19246 (steps_per_execution under MirroredStrategy), #20585 (multi-worker reduce)",
    SYMBOLIC_BUILD: "keras-team/keras#20585",
    JIT_ON_LOGICAL_CPUS: "https://www.tensorflow.org/xla/known_issues#tfvariable_on_a_different_device",
}


def _is_mirrored(strategy):
    return isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy))


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _on_several_cpus(strategy):
    devices = getattr(strategy.extended, "worker_devices", ())
    return len(devices) > 1 and all("CPU" in d.upper() for d in devices)


def resolve_jit_compile(strategy, requested):
    """The jit_compile value to give `model.compile` under `strategy` (workaround JIT_ON_LOGICAL_CPUS)."""
    if requested is True and _is_mirrored(strategy) and _on_several_cpus(strategy):
        log.warning("jit_compile=True is not possible with replicas on logical CPU devices (%s); compiling "
                    "without XLA instead.", UPSTREAM[JIT_ON_LOGICAL_CPUS])
        return False
    return requested


def _reduce_outputs(outputs, strategy):
    """Mean over replicas of each output (the train step returns metric results, which are scalars)."""
    def reduce(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
        return value
    return tree.map_structure(reduce, outputs)


def _install_step_loop(model, strategy):
    steps = int(model.steps_per_execution)

    def one_step(iterator):
        return _reduce_outputs(strategy.run(model.train_step, args=(next(iterator),)), strategy)

    @tf.function(reduce_retracing=True)
    def multi_step(iterator):
        outputs = one_step(iterator)
        for _ in tf.range(steps - 1):
            outputs = one_step(iterator)
        return outputs

    def train_function(iterator):
        if not isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
            raise TypeError("this train function runs on a distributed iterator (model.fit over a tf.data stream).")
        return multi_step(iterator)

    model.train_function = train_function


def _install_symbolic_build(model, strategy):
    def first_replica(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def _maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(first_replica, next(it))
                break
        with strategy.scope():
            compat.symbolic_build(model, data_batch)

    compat.replace_symbolic_build(model, _maybe_symbolic_build)


def needed(strategy, steps_per_execution=1):
    """Names of the workarounds `strategy` needs."""
    names = []
    if _is_mirrored(strategy) and (steps_per_execution > 1 or _is_multi_worker(strategy)):
        names.append(STEP_LOOP)
    if _is_multi_worker(strategy):
        names.append(SYMBOLIC_BUILD)
    return names


def apply(model, strategy, only=None):
    """Patch a compiled `model` for `strategy`; returns the names of the workarounds applied.

    Call after `model.compile` (compiling again drops the train function). `only` restricts to some names
    (tests use it to show that each patch is needed on its own).
    """
    if getattr(model, "optimizer", None) is None:
        raise ValueError("apply the Keras workarounds to a compiled model (call model.compile first).")
    names = [n for n in needed(strategy, int(model.steps_per_execution)) if only is None or n in only]
    for name in names:
        {STEP_LOOP: _install_step_loop, SYMBOLIC_BUILD: _install_symbolic_build}[name](model, strategy)
        log.info("Keras workaround %s applied (%s)", name, UPSTREAM[name])
    return names
