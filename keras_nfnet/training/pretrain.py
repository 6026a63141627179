"""The pretraining job: an NFNet trained with `model.fit` on a corpus, under a tf.distribute strategy,
preemption-safe, watched in TensorBoard.

    from keras_nfnet.training.config import load_config
    from keras_nfnet.training.pretrain import pretrain
    result = pretrain(load_config("trainers/configs/cpu_tiny.py:corpus=/data/c"), workdir="/runs/tiny")

The work directory holds everything a run produces:

    config.json          the config the run started with (a resume with an incompatible config is refused)
    checkpoints/         ckpt-<step>/ {model.weights.h5, state.json}, the last N
    tensorboard/         event files (scalars, hparams)
    result.json          final step, held-out loss, compute, skipped bad records (written when the budget is done)

Re-running the same command resumes from the newest intact checkpoint at the exact step and data position.
Before anything is written to a new work directory the corpus is checked: the cheap every-open checks and, at this
first open, the SHA-256 of every shard the run reads (`verify_checksums`), so a damaged corpus leaves nothing
behind that a later run would trust.
"""
import dataclasses
import hashlib
import json
import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf

from keras_nfnet import storage
from keras_nfnet.data import corpus as corpus_lib
from keras_nfnet.data import pipeline
from keras_nfnet import architectures
from keras_nfnet.data import verify
from keras_nfnet.losses import recipe_loss
from keras_nfnet.optimizers import nfnet_optimizer
from keras_nfnet.training import callbacks as cb
from keras_nfnet.training import config as config_lib
from keras_nfnet.training import keras_workarounds
from keras_nfnet.training import strategy as strategy_lib
from keras_nfnet.training.checkpoint import CheckpointManager
from keras_nfnet.training.compute import ComputeClock, measure_peak_flops, train_flops_per_image
from keras_nfnet.training.heldout import HeldOutEvaluator

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PretrainResult:
    status: str                 # "done", "preempted" (SIGTERM; checkpoint written) or "stopped" (max_steps)
    step: int
    total_steps: int
    heldout_loss: float
    flops: float
    device_hours: float
    workdir: str
    tensorboard_dir: str
    weights_sha256: str         # fingerprint of the final weights (equal on every worker of a synchronous job)
    bad_records: dict = dataclasses.field(default_factory=dict)  # split -> {reason: distinct records skipped}


def _corpus_fingerprint(corpus_dir):
    """sha256 of the corpus metadata (classes, splits, shard checksums): the same corpus, wherever it lives."""
    return hashlib.sha256(storage.read_bytes(storage.join(corpus_dir, corpus_lib.METADATA_FILE))).hexdigest()


def _check_workdir(workdir):
    if storage.exists(workdir) and not storage.isdir(workdir):
        raise ValueError(f"workdir {workdir} exists and is not a directory; choose a directory path")


def check_corpus(config, new_run, progress=print):
    """The corpus checks a run makes before it writes anything: every-open checks of the train and held-out
    splits, and at a new run's first open the SHA-256 of each of their files (unless verify_checksums=False).
    CorruptRecordError / FileNotFoundError naming the split and shard."""
    info = corpus_lib.load_metadata(config.corpus)
    splits = [config.train_split, config.heldout_split]
    for split in splits:
        verify.open_split(info, split).close()
    if new_run and config.verify_checksums:
        started = time.time()
        hashed = verify.verify_checksums(info, splits)
        progress(f"corpus checksums verified: {hashed / 1e6:.1f} MB of {', '.join(splits)} in "
                 f"{time.time() - started:.1f} s")
    return info


def _prepare_workdir(workdir, config, chief):
    storage.makedirs(workdir)
    path = storage.join(workdir, "config.json")
    current = dict(config.to_dict(), corpus_sha256=_corpus_fingerprint(config.corpus))
    saved = config_lib.read_config(path)
    if saved is not None:
        config_lib.check_resume(saved, current)
    elif chief:
        storage.write_atomic(path, json.dumps(current, indent=1, sort_keys=True))


def pretrain(config, workdir, strategy=None):
    """Run (or resume) the pretraining job described by `config` in `workdir`; returns a PretrainResult.

    Raises ValueError for a bad config before any heavy work, and cb.TrainingDiverged when the loss becomes
    NaN/inf (the last good checkpoint is left intact).
    """
    if not workdir:
        raise ValueError("workdir must be a directory path (it holds checkpoints, logs and the result).")
    config_lib.validate(config)  # everything that can be checked without TensorFlow devices
    _check_workdir(workdir)
    new_run = not storage.exists(storage.join(workdir, "config.json"))
    check_corpus(config, new_run)  # before the strategy (a multi-worker job's workers all fail alike) and workdir
    if strategy is None:
        strategy = strategy_lib.make_strategy(config.strategy, config.num_cpu_devices, config.tpu_address)
    replicas = strategy.num_replicas_in_sync
    config_lib.validate(config, num_replicas=replicas)
    chief = strategy_lib.is_chief(strategy)
    _prepare_workdir(workdir, config, chief)

    info = corpus_lib.load_metadata(config.corpus)
    num_train = info.split(config.train_split).num_examples
    row = architectures.get_row(config.variant)  # an NFNet or a ViT row
    image_size = config.image_size or row.train_image_size
    eval_size = config.eval_image_size or row.test_image_size
    steps_total = config_lib.total_steps(config, num_train)
    last_step = min(steps_total, config.max_steps) if config.max_steps else steps_total
    warmup = int(round(config.warmup_epochs * num_train / config.global_batch_size))
    precision = strategy_lib.resolve_precision(config.precision, strategy)
    log.info("%s on %d %s (%s strategy), %s: %d steps of %d images = %.3g epochs of %d examples",
             config.variant, replicas, "replica" if replicas == 1 else "replicas", config.strategy, precision,
             steps_total, config.global_batch_size, config.epochs, num_train)

    keras.utils.set_random_seed(config.seed)  # same initial weights on every replica, host and restart
    with strategy.scope():
        model = architectures.build(config.variant, num_classes=info.num_classes,
                                    stochastic_depth_rate=config.stochastic_depth_rate,
                                    dropout_rate=None if config.dropout_rate < 0 else config.dropout_rate,
                                    input_shape=(image_size, image_size, 3),
                                    dtype=None if precision == "float32" else precision)
        optimizer = nfnet_optimizer(base_learning_rate=config.base_learning_rate,
                                    batch_size=config.global_batch_size, total_steps=steps_total,
                                    warmup_steps=warmup, weight_decay=config.weight_decay,
                                    clip_factor=config.agc_clip if config.agc_clip > 0 else None,
                                    momentum=config.momentum)
        model.compile(optimizer=optimizer, loss=recipe_loss(info.multi_label, config.label_smoothing),
                      steps_per_execution=config.steps_per_execution,
                      jit_compile=keras_workarounds.resolve_jit_compile(strategy, config.jit_compile))
        optimizer.build(model.trainable_variables)
    keras_workarounds.apply(model, strategy)

    manager = CheckpointManager(storage.join(workdir, "checkpoints"), keep=config.keep_checkpoints, write=chief)
    flops_per_image = train_flops_per_image(row, image_size, info.num_classes)
    peak = config.peak_flops_per_device or None
    clock = ComputeClock(flops_per_image, replicas, peak)
    # Under on_bad_record="skip": the records skipped so far, per split (kept in checkpoints across restarts).
    reports = ({config.train_split: pipeline.BadRecordReport(), config.heldout_split: pipeline.BadRecordReport()}
               if config.on_bad_record == "skip" else {})
    start_step = 0
    if manager.all_steps():
        start_step, state = manager.restore(model, report=lambda line: print(line, flush=True))
        clock.load_state(state.get("compute", {}))
        for split, report in reports.items():
            report.load_state(state.get("bad_records", {}).get(split, {}))
        print(f"Resuming from step {start_step} of {steps_total} (checkpoint {manager.path(start_step)}); the "
              f"input stream restarts at data position {start_step} (epoch "
              f"{start_step * config.global_batch_size // num_train}).", flush=True)
    if peak is None:
        clock.peak_flops_per_device = measure_peak_flops(seconds=0.5)
        log.info("measured peak %.3g FLOP/s per device (matmul)", clock.peak_flops_per_device)

    tb_dir = storage.join(workdir, "tensorboard")
    writer = cb.SummaryWriter(tb_dir if chief else storage.join(workdir, ".tb_worker"))
    if chief and start_step == 0:
        cb.write_hparams(writer, config.to_dict(), trial_id=storage.basename(storage.abspath(workdir)))

    def train_fn(ctx):
        return pipeline.train_dataset(config.corpus, config.train_split, config.global_batch_size, image_size,
                                      config.seed, start_step=start_step, input_context=ctx, crop=config.crop,
                                      flip=config.flip, on_bad_record=config.on_bad_record,
                                      bad_record_report=reports.get(config.train_split))

    evaluator = HeldOutEvaluator(model, strategy, config.corpus, config.heldout_split,
                                 _eval_batch(config.global_batch_size, replicas), eval_size,
                                 recipe_loss(info.multi_label, reduction=None), on_bad_record=config.on_bad_record,
                                 bad_record_report=reports.get(config.heldout_split))
    guard = cb.DivergenceGuard()
    preemption = cb.PreemptionSignal(strategy=strategy)
    state_fn = lambda: {"compute": clock.state(), "data_position": global_step_of(model),  # noqa: E731
                        "total_steps": steps_total, "time": time.time(),
                        "bad_records": {split: report.state() for split, report in reports.items()}}
    checkpointing = cb.Checkpointing(manager, config.checkpoint_every_steps, state_fn, guard, preemption, clock)
    heldout = cb.HeldOutLoss(evaluator, writer, clock, config.eval_every_steps, guard, preemption)
    callbacks = [guard, cb.StopAtStep(last_step), cb.TrainingScalars(writer, clock, config.log_every_steps,
                                                                    config.global_batch_size),
                 checkpointing, heldout]
    if chief and config.verbose:  # progress in steps of the run and epochs of the corpus, not Keras' intervals
        callbacks.append(cb.StepProgress(steps_total, config.global_batch_size, num_train))
    if reports and chief:
        callbacks.append(cb.BadRecordScalars(writer, reports, config.log_every_steps))

    def suspects():  # where an anonymous parse or decoding error in fit can come from: the training steps being
        step = global_step_of(model)  # read, then the held-out split (evaluated inside fit)
        return [(config.train_split, pipeline.train_step_records(
            config.corpus, config.train_split, config.global_batch_size, config.seed, step)),
                (config.heldout_split, None)]

    try:  # the event writer is closed however the run ends (divergence, preemption, an error in fit)
        try:
            with pipeline.naming_bad_records(config.corpus, suspects):
                if start_step < last_step:
                    epoch_len = min(config.eval_every_steps, last_step)
                    model.fit(strategy.distribute_datasets_from_function(train_fn),
                              epochs=-(-last_step // epoch_len), initial_epoch=start_step // epoch_len,
                              steps_per_epoch=epoch_len, callbacks=callbacks,
                              shuffle=False,  # the stream is already shuffled, per epoch, by the exactly-once sampler
                              verbose=0)
                elif not heldout.history:
                    heldout._evaluate(global_step_of(model))  # the run was already complete: report its loss again
        finally:
            preemption.restore()
            writer.flush()
        step = global_step_of(model)
        if guard.diverged is not None:
            bad_step, what = guard.diverged
            what = f"the loss became {what}" if isinstance(what, float) else what
            kept = manager.latest_step()
            raise cb.TrainingDiverged(
                f"training diverged: {what} at step {bad_step}. The last good checkpoint "
                f"({manager.path(kept) if kept is not None else 'none'}) is intact; lower base_learning_rate "
                f"(now {config.base_learning_rate}) or agc_clip (now {config.agc_clip}) and start a new workdir.")
        preempted = checkpointing.preempted_at is not None
        status = "done" if step >= steps_total else ("preempted" if preempted else "stopped")
        result = PretrainResult(status, step, steps_total, heldout.history[-1][1] if heldout.history else math.nan,
                                clock.flops, clock.device_hours, storage.abspath(workdir), storage.abspath(tb_dir),
                                weights_fingerprint(model),
                                {split: report.counts() for split, report in reports.items()})
        for split, report in reports.items():
            if report.counts():
                print(f"split {split!r}: {report.summary()}", flush=True)
        if chief and status == "done":
            storage.write_atomic(storage.join(workdir, "result.json"), json.dumps(dataclasses.asdict(result), indent=1))
    finally:
        writer.close()
    return result


def weights_fingerprint(model):
    """sha256 of every weight's bytes, in model order."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def global_step_of(model):
    return int(model.optimizer.iterations.numpy())


def _eval_batch(global_batch_size, replicas):
    return max(replicas, (global_batch_size // replicas) * replicas)
