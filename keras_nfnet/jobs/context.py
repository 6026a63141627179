"""What every job shares: the work directory and its saved config, strategy, seeding, compiling a model with the
Keras workarounds, checkpoints and resuming from them, TensorBoard, the divergence stop and the result file.

Every job writes one `result.json` into its work directory when it completes, with the same top-level fields:

    job              "pretrain" | "finetune" | "evaluate" | "sweep"
    status           "done" (written only then), or, in the returned dict, "stopped" (max_steps) or "preempted"
    step, total_steps  training steps done and planned (0 and 0 for an evaluation)
    seconds          wall time of this process
    workdir, tensorboard_dir
    bad_records      split -> {reason: distinct records skipped} under on_bad_record="skip"
    config           the job's config
    metrics          the job's own numbers (held-out loss and compute; top-1/top-5; ...)

A run that diverges writes no result (the job raises TrainingDiverged; the apps exit with status 3).
"""
import hashlib
import json
import time

from keras_nfnet import storage
from keras_nfnet.jobs import config as config_lib

RESULT_FILE = "result.json"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"


def check_workdir(workdir):
    """ValueError unless `workdir` can be a work directory (nothing is created)."""
    if not workdir:
        raise ValueError("workdir must be a directory path (it holds checkpoints, logs and the result)")
    if storage.exists(workdir) and not storage.isdir(workdir):
        raise ValueError(f"workdir {workdir} exists and is not a directory; choose a directory path")


def prepare_workdir(workdir, saved_config, resume_safe, chief=True, defaults=None):
    """Create `workdir`; a new one gets `saved_config` (dict) as config.json, an existing one must hold a
    compatible config (ValueError naming the changed fields; fields it lacks count as their `defaults`)."""
    storage.makedirs(workdir)
    saved = config_lib.read_saved(workdir)
    if saved is not None:
        config_lib.check_resume(saved, saved_config, resume_safe, defaults)
    elif chief:
        write_json(storage.join(workdir, config_lib.SAVED_CONFIG), saved_config)


def corpus_fingerprint(corpus_dir):
    """sha256 of the corpus metadata (classes, splits, shard checksums): the same corpus, wherever it lives (saved
    with the config, so that `corpus`, a path, may be resume-safe)."""
    from keras_nfnet.data import corpus as corpus_lib

    return hashlib.sha256(storage.read_bytes(storage.join(corpus_dir, corpus_lib.METADATA_FILE))).hexdigest()


def make_strategy(config):
    from keras_nfnet.training import strategy as strategy_lib

    return strategy_lib.make_strategy(config.strategy, config.num_cpu_devices, config.get("tpu_address", ""))


def seed(value):
    """Same initial weights on every replica, host and restart; the data order has its own seed (the sampler)."""
    import keras

    keras.utils.set_random_seed(value)


def compile_model(model, strategy, optimizer, loss, steps_per_execution=1, jit_compile=False, before_build=None):
    """Compile under the strategy, build the optimizer's variables there, then install the Keras workarounds
    (keras_nfnet.training.keras_workarounds). `before_build(model)` runs after compile (e.g. SAM)."""
    from keras_nfnet.training import keras_workarounds

    with strategy.scope():
        model.compile(optimizer=optimizer, loss=loss, steps_per_execution=steps_per_execution,
                      jit_compile=keras_workarounds.resolve_jit_compile(strategy, jit_compile))
        if before_build is not None:
            before_build(model)
        optimizer.build(model.trainable_variables)
    keras_workarounds.apply(model, strategy)
    return model


def checkpoint_manager(workdir, keep, chief=True):
    """The run's CheckpointManager (training.checkpoint) in <workdir>/checkpoints; only the chief writes."""
    from keras_nfnet.training.checkpoint import CheckpointManager

    return CheckpointManager(storage.join(workdir, CHECKPOINT_DIR), keep=keep, write=chief)


def resume(manager, model, total_steps, global_batch_size, num_train, reports=None):
    """Load the newest intact checkpoint into `model` (compiled, optimizer built): weights, optimizer state (with
    the wrappers' and the weight averages' variables), step and random generators, and the skipped-record counts
    into `reports` (split -> BadRecordReport). Returns (step, state); (0, {}) when there is no checkpoint.

    The data position is the step: the input stream's batch at step s is a function of (seed, s), so a run
    rebuilds it at `step` and continues exactly (keras_nfnet.data.pipeline)."""
    if not manager.all_steps():
        return 0, {}
    step, state = manager.restore(model, report=lambda line: print(line, flush=True))
    for split, report in (reports or {}).items():
        report.load_state(state.get("bad_records", {}).get(split, {}))
    print(f"Resuming from step {step} of {total_steps} (checkpoint {manager.path(step)}); the input stream restarts "
          f"at data position {step} (epoch {step * global_batch_size // num_train}).", flush=True)
    return step, state


def checkpoint_state(model, total_steps, reports=None, extra=None):
    """The `state_fn` of training.callbacks.Checkpointing: what a checkpoint keeps beside the weights (the data
    position, the skipped-record counts, and `extra()`, a job's own state)."""

    def state():
        return dict(extra() if extra is not None else {}, data_position=int(model.optimizer.iterations.numpy()),
                    total_steps=total_steps, time=time.time(),
                    bad_records={split: report.state() for split, report in (reports or {}).items()})

    return state


def weights_fingerprint(model):
    """sha256 of every weight's bytes, in model order (equal on every worker of a synchronous job)."""
    import numpy as np

    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def tensorboard_writer(workdir, chief=True):
    """The event writer of the run, local or remote (callbacks.SummaryWriter); a non-chief worker writes to a
    scratch directory nobody reads."""
    from keras_nfnet.training.callbacks import SummaryWriter

    return SummaryWriter(storage.join(workdir, TENSORBOARD_DIR if chief else ".tb_worker"))


def raise_if_diverged(guard, checkpoints=None, hint=""):
    """TrainingDiverged when `guard` (a DivergenceGuard) saw a non-finite loss or weights."""
    from keras_nfnet.training.callbacks import TrainingDiverged

    if guard.diverged is None:
        return
    step, what = guard.diverged
    what = f"the loss became {what}" if isinstance(what, float) else what
    kept = ""
    if checkpoints is not None:
        last = checkpoints.latest_step()
        kept = (f" The last good checkpoint ({checkpoints.path(last) if last is not None else 'none'}) is "
                "intact;")
    raise TrainingDiverged(f"training diverged: {what} at step {step}.{kept} {hint[:1].upper()}{hint[1:]}".rstrip())


class Clock:
    """Wall time of this process, for the result."""

    def __init__(self):
        self.started = time.time()

    def seconds(self):
        return round(time.time() - self.started, 1)


def result(job, status, workdir, config, metrics, step=0, total_steps=0, seconds=0.0, bad_records=None):
    """The result dict every job returns (and writes, when done): see the module docstring."""
    workdir = storage.abspath(workdir)
    return {"job": job, "status": status, "step": int(step), "total_steps": int(total_steps),
            "seconds": seconds, "workdir": workdir, "tensorboard_dir": storage.join(workdir, TENSORBOARD_DIR),
            "bad_records": bad_records or {}, "config": config_lib.as_dict(config) if hasattr(config, "to_dict")
            else config, "metrics": metrics}


def write_result(workdir, value, chief=True):
    if chief:
        write_json(storage.join(workdir, RESULT_FILE), value)
    return value


def read_result(workdir):
    """The result of a completed job in `workdir`, or None."""
    path = storage.join(workdir, RESULT_FILE)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def write_json(path, value):
    """Written atomically: a reader never sees a partial file."""
    storage.write_atomic(path, json.dumps(value, indent=1, sort_keys=True))
