"""A tf.distribute strategy from one flag, and what follows from it (replica count, per-replica batch, precision).

kinds:
  default      the default strategy (one device, nothing distributed)
  mirrored     MirroredStrategy over every local GPU, or over N logical CPU devices when there is no GPU
               (N = num_cpu_devices; that is how the multi-replica path is tested on a CPU-only machine)
  multiworker  MultiWorkerMirroredStrategy, cluster from the TF_CONFIG environment variable
  tpu          TPUStrategy through a TPUClusterResolver for `tpu_address` ('' or 'local' = the attached TPU)
"""
import json
import os

import tensorflow as tf

from keras_nfnet import compat

KINDS = ("default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def _logical_cpus(n):
    """Split the first physical CPU into n logical devices (only possible before TensorFlow initialises)."""
    cpus = tf.config.list_physical_devices("CPU")
    existing = tf.config.get_logical_device_configuration(cpus[0])
    if existing is not None and len(existing) == n:
        return [d.name for d in tf.config.list_logical_devices("CPU")][:n]
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        have = tf.config.list_logical_devices("CPU")
        if len(have) >= n:
            return [d.name for d in have][:n]
        raise ValueError(
            f"num_cpu_devices={n} needs {n} logical CPU devices, but TensorFlow is already initialised with "
            f"{len(have)}; choose the strategy before any TensorFlow work runs.") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")][:n]


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable (cluster and task); "
                         "it is not set.")
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        task = cfg["task"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"TF_CONFIG must be JSON with 'cluster': {{'worker': [...]}} and 'task'; got {raw!r}.")
    if task.get("type") not in ("worker", "chief") or not 0 <= int(task.get("index", -1)) < len(workers) + 1:
        raise ValueError(f"TF_CONFIG task {task!r} does not name a worker of the cluster {workers!r}.")
    return cfg


def _fresh_collective_keys(make):
    """Collective-based strategies created in one process start their collective keys at the same base, and a
    second one then reuses the first one's keys ("Shape mismatch in the collective instance ..."). TensorFlow's
    own test combinations move the base on for each strategy; do the same, before and after, so strategies made
    elsewhere in the process do not collide with this one either."""
    compat.advance_collective_keys()
    try:
        return make()
    finally:
        compat.advance_collective_keys()


def make_strategy(kind="default", num_cpu_devices=2, tpu_address=""):
    """The strategy for `kind` (one of KINDS). Call it before any other TensorFlow work."""
    if kind not in KINDS:
        raise ValueError(f"Unknown strategy {kind!r}; accepted: {', '.join(KINDS)}.")
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        if int(num_cpu_devices) < 1:
            raise ValueError(f"num_cpu_devices must be >= 1; got {num_cpu_devices}.")
        # Default (collective all-reduce) cross-device ops, as on GPUs, so the tested path is the GPU path.
        return _fresh_collective_keys(lambda: tf.distribute.MirroredStrategy(_logical_cpus(int(num_cpu_devices))))
    if kind == "multiworker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "local")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """True on the one process that writes checkpoints and logs (always true outside multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return not has_chief and task_type == "worker" and task_id == 0


def device_kind(strategy):
    """'tpu', 'gpu' or 'cpu': what the replicas run on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    devices = getattr(strategy.extended, "worker_devices", None) or ["/cpu:0"]
    return "gpu" if any("GPU" in d.upper() for d in devices) else "cpu"


def per_replica_batch_size(global_batch_size, strategy):
    """Batch sizes in configs are global; each replica gets an equal share."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the {replicas} replicas of "
                         f"the strategy; use a multiple of {replicas}.")
    return global_batch_size // replicas


def resolve_precision(precision, strategy):
    """'auto' means bf16 activations with fp32 params on TPU and GPU (the paper's setting), fp32 on CPU
    (bf16 is slower than fp32 on CPUs without AMX)."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "float32" if device_kind(strategy) == "cpu" else "mixed_bfloat16"
    return precision
