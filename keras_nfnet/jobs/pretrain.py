"""The pretraining job: an NFNet (or ViT) trained with `model.fit` on a corpus, under a tf.distribute strategy,
preemption-safe, watched in TensorBoard.

    python -m keras_nfnet.jobs.pretrain --config=cpu_tiny --config.corpus=/data/c --workdir=/runs/tiny
    nfnet-pretrain --config=jft_pretrain:F3+ --config.corpus=gs://bucket/jft --workdir=gs://bucket/runs/f3

    from keras_nfnet.jobs import config, pretrain
    result = pretrain.pretrain(config.load("cpu_tiny", corpus="/data/c"), workdir="/runs/tiny")

The work directory holds everything a run produces:

    config.json          the config the run started with (a resume with an incompatible config is refused)
    checkpoints/         ckpt-<step>/ {model.weights.h5, state.json}, the last N
    tensorboard/         event files (scalars, hparams)
    result.json          the job result (keras_nfnet.jobs.context), written when the budget is done; its
                         metrics: held-out loss, training FLOPs, device-hours, final weights' sha256

Re-running the same command resumes from the newest intact checkpoint at the exact step and data position.
Before anything is written to a new work directory the config is validated (every problem at once) and the corpus
is checked: the cheap every-open checks and, at this first open, the SHA-256 of every shard the run reads
(`verify_checksums`), so a damaged corpus leaves nothing behind that a later run would trust.
"""
import logging
import math
import time

from keras_nfnet import architectures, storage
from keras_nfnet.jobs import context
from keras_nfnet.jobs import defaults
from keras_nfnet.jobs import config as config_lib

log = logging.getLogger(__name__)

# Fields that may change between a run and its resumption: they change how work is executed, not its result.
RESUME_SAFE = frozenset({
    "strategy", "num_cpu_devices", "tpu_address", "steps_per_execution", "jit_compile", "checkpoint_every_steps",
    "keep_checkpoints", "eval_every_steps", "log_every_steps", "peak_flops_per_device", "verbose", "max_steps",
    "precision", "corpus",  # the corpus may move; its content is checked by fingerprint (corpus_sha256)
    # Switching to "skip" is how a run goes on past a bad record; the skips are reported. The checksums are only
    # verified at a run's first open anyway.
    "on_bad_record", "verify_checksums",
})


def validate(config, num_replicas=None):
    """Raise ValueError naming every bad field of `config` (and the corpus), before any heavy work starts."""
    from keras_nfnet.training.strategy import KINDS, PRECISIONS

    problems = config_lib.check_fields(config, defaults.pretrain())
    if problems:  # the checks below read the fields
        raise ValueError("bad pretraining config:\n  - " + "\n  - ".join(problems))
    known = architectures.known_names()
    if config.variant not in known:
        problems.append(f"unknown variant {config.variant!r}; known variants (NFNet and ViT): {', '.join(known)}")
    if not (config.epochs > 0 and math.isfinite(config.epochs)):
        problems.append(f"epochs (the epoch budget) must be > 0; got {config.epochs}")
    if config.global_batch_size < 1:
        problems.append(f"global_batch_size must be >= 1; got {config.global_batch_size}")
    elif num_replicas and config.global_batch_size % num_replicas:
        problems.append(f"global_batch_size {config.global_batch_size} is not divisible by the {num_replicas} "
                        f"replicas; use a multiple of {num_replicas}")
    if config.strategy not in KINDS:
        problems.append(f"unknown strategy {config.strategy!r}; accepted: {', '.join(KINDS)}")
    if config.on_bad_record not in ("raise", "skip"):
        problems.append(f"on_bad_record must be 'raise' or 'skip'; got {config.on_bad_record!r}")
    if config.precision not in PRECISIONS:
        problems.append(f"unknown precision {config.precision!r}; accepted: {', '.join(PRECISIONS)}")
    if config.optimizer not in ("sgd", "adamw"):
        problems.append(f"optimizer must be 'sgd' or 'adamw'; got {config.optimizer!r}")
    if not config.base_learning_rate > 0:
        problems.append(f"base_learning_rate must be > 0; got {config.base_learning_rate}")
    if config.warmup_epochs < 0 or config.warmup_epochs >= config.epochs > 0:
        problems.append(f"warmup_epochs must be in [0, epochs={config.epochs}); got {config.warmup_epochs}")
    for name in ("steps_per_execution", "checkpoint_every_steps", "keep_checkpoints", "eval_every_steps",
                 "log_every_steps"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be >= 1; got {getattr(config, name)}")
    if config.steps_per_execution > 1:
        for name in ("checkpoint_every_steps", "eval_every_steps", "log_every_steps"):
            if getattr(config, name) % config.steps_per_execution:
                problems.append(f"{name}={getattr(config, name)} must be a multiple of steps_per_execution="
                                f"{config.steps_per_execution} (steps run in groups of that size)")
    if config.max_steps < 0 or (config.max_steps and config.max_steps % max(1, config.steps_per_execution)):
        problems.append(f"max_steps must be 0 (off) or a positive multiple of steps_per_execution; got "
                        f"{config.max_steps}")
    for name in ("image_size", "eval_image_size"):
        size = getattr(config, name)
        if size and config.variant in known and size < architectures.get_row(config.variant).min_image_size:
            problems.append(f"{name}={size} is below the smallest image {config.variant} accepts "
                            f"({architectures.get_row(config.variant).min_image_size} px)")
        elif size and config.variant in known and size % getattr(architectures.get_row(config.variant), "patch_size", 1):
            problems.append(f"{name}={size} is not a multiple of {config.variant}'s patch size "
                            f"({architectures.get_row(config.variant).patch_size} px)")
    problems += _corpus_problems(config)
    if problems:
        raise ValueError("bad pretraining config:\n  - " + "\n  - ".join(problems))


def _corpus_problems(config):
    from keras_nfnet.data import corpus as corpus_lib

    if not config.corpus:
        return ["corpus is not set (the directory of a corpus made by datasets/)"]
    if not storage.exists(storage.join(config.corpus, corpus_lib.METADATA_FILE)):
        return [f"corpus {config.corpus} is missing or not a corpus (no metadata.json there)"]
    info = corpus_lib.load_metadata(config.corpus)
    problems = [f"corpus {config.corpus} has no split {split!r}; it has {sorted(info.splits)}"
                for split in (config.train_split, config.heldout_split) if split not in info.splits]
    if not problems and config.global_batch_size >= 1:
        n = info.split(config.train_split).num_examples
        if n < config.global_batch_size:
            problems.append(f"split {config.train_split!r} has {n} examples, fewer than one global batch "
                            f"({config.global_batch_size})")
    return problems


def total_steps(config, num_train_examples):
    """Steps of the epoch budget: ceil(epochs x examples / batch), rounded up to whole steps_per_execution groups."""
    steps = max(1, math.ceil(config.epochs * num_train_examples / config.global_batch_size))
    spe = config.steps_per_execution
    return -(-steps // spe) * spe


def check_corpus(config, new_run, progress=print):
    """The corpus checks a run makes before it writes anything: every-open checks of the train and held-out
    splits, and at a new run's first open the SHA-256 of each of their files (unless verify_checksums=False).
    CorruptRecordError / FileNotFoundError naming the split and shard."""
    from keras_nfnet.data import corpus as corpus_lib
    from keras_nfnet.data import verify

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


def pretrain(config, workdir, strategy=None):
    """Run (or resume) the pretraining job described by `config` in `workdir`; returns the result dict
    (keras_nfnet.jobs.context; written to result.json when the budget is done).

    Raises ValueError for a bad config before any heavy work, and TrainingDiverged when the loss becomes NaN/inf
    (the last good checkpoint is left intact).
    """
    import keras  # noqa: F401 - TensorFlow only once the config is known to be good

    from keras_nfnet.data import corpus as corpus_lib
    from keras_nfnet.data import pipeline
    from keras_nfnet.losses import recipe_loss
    from keras_nfnet.optimizers import adamw_optimizer, nfnet_optimizer
    from keras_nfnet.training import callbacks as cb
    from keras_nfnet.training import strategy as strategy_lib
    from keras_nfnet.training.compute import ComputeClock, measure_peak_flops, train_flops_per_image
    from keras_nfnet.training.heldout import HeldOutEvaluator

    clock_wall = context.Clock()
    validate(config)  # everything that can be checked without TensorFlow devices
    context.check_workdir(workdir)
    new_run = not storage.exists(storage.join(workdir, config_lib.SAVED_CONFIG))
    check_corpus(config, new_run)  # before the strategy (a multi-worker job's workers all fail alike) and workdir
    if strategy is None:
        strategy = context.make_strategy(config)
    replicas = strategy.num_replicas_in_sync
    validate(config, num_replicas=replicas)
    chief = strategy_lib.is_chief(strategy)
    context.prepare_workdir(workdir, dict(config_lib.as_dict(config),
                                          corpus_sha256=context.corpus_fingerprint(config.corpus)), RESUME_SAFE, chief,
                            defaults=config_lib.as_dict(defaults.pretrain()))

    info = corpus_lib.load_metadata(config.corpus)
    num_train = info.split(config.train_split).num_examples
    row = architectures.get_row(config.variant)  # an NFNet or a ViT row
    image_size = config.image_size or row.train_image_size
    eval_size = config.eval_image_size or row.test_image_size
    steps_total = total_steps(config, num_train)
    last_step = min(steps_total, config.max_steps) if config.max_steps else steps_total
    warmup = int(round(config.warmup_epochs * num_train / config.global_batch_size))
    precision = strategy_lib.resolve_precision(config.precision, strategy)
    log.info("%s on %d %s (%s strategy), %s: %d steps of %d images = %.3g epochs of %d examples",
             config.variant, replicas, "replica" if replicas == 1 else "replicas", config.strategy, precision,
             steps_total, config.global_batch_size, config.epochs, num_train)

    context.seed(config.seed)
    with strategy.scope():
        model = architectures.build(config.variant, num_classes=info.num_classes,
                                    stochastic_depth_rate=config.stochastic_depth_rate,
                                    dropout_rate=None if config.dropout_rate < 0 else config.dropout_rate,
                                    input_shape=(image_size, image_size, 3),
                                    dtype=None if precision == "float32" else precision)
        schedule = dict(base_learning_rate=config.base_learning_rate, batch_size=config.global_batch_size,
                        total_steps=steps_total, warmup_steps=warmup, weight_decay=config.weight_decay)
        if config.optimizer == "adamw":
            optimizer = adamw_optimizer(**schedule)
        else:
            optimizer = nfnet_optimizer(**schedule, clip_factor=config.agc_clip if config.agc_clip > 0 else None,
                                        momentum=config.momentum)
    context.compile_model(model, strategy, optimizer, recipe_loss(info.multi_label, config.label_smoothing),
                          config.steps_per_execution, config.jit_compile)

    manager = context.checkpoint_manager(workdir, config.keep_checkpoints, chief)
    flops_per_image = train_flops_per_image(row, image_size, info.num_classes)
    peak = config.peak_flops_per_device or None
    clock = ComputeClock(flops_per_image, replicas, peak)
    # Under on_bad_record="skip": the records skipped so far, per split (kept in checkpoints across restarts).
    reports = ({config.train_split: pipeline.BadRecordReport(), config.heldout_split: pipeline.BadRecordReport()}
               if config.on_bad_record == "skip" else {})
    start_step, state = context.resume(manager, model, steps_total, config.global_batch_size, num_train, reports)
    clock.load_state(state.get("compute", {}))
    if peak is None:
        clock.peak_flops_per_device = measure_peak_flops(seconds=0.5)
        log.info("measured peak %.3g FLOP/s per device (matmul)", clock.peak_flops_per_device)

    writer = context.tensorboard_writer(workdir, chief)
    if chief and start_step == 0:
        cb.write_hparams(writer, config_lib.as_dict(config),
                         trial_id=storage.basename(storage.abspath(workdir).rstrip("/")))

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
    state_fn = context.checkpoint_state(model, steps_total, reports, lambda: {"compute": clock.state()})
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
        context.raise_if_diverged(guard, manager, f"lower base_learning_rate (now {config.base_learning_rate}) or "
                                                  f"agc_clip (now {config.agc_clip}) and start a new workdir.")
        preempted = checkpointing.preempted_at is not None
        status = "done" if step >= steps_total else ("preempted" if preempted else "stopped")
        metrics = {"heldout_loss": heldout.history[-1][1] if heldout.history else math.nan, "flops": clock.flops,
                   "device_hours": clock.device_hours, "weights_sha256": context.weights_fingerprint(model)}
        bad_records = {split: report.counts() for split, report in reports.items()}
        for split, report in reports.items():
            if report.counts():
                print(f"split {split!r}: {report.summary()}", flush=True)
        result = context.result("pretrain", status, workdir, config, metrics, step, steps_total,
                                clock_wall.seconds(), bad_records)
        if status == "done":
            context.write_result(workdir, result, chief)
    finally:
        writer.close()
    return result


def global_step_of(model):
    return int(model.optimizer.iterations.numpy())


def _eval_batch(global_batch_size, replicas):
    return max(replicas, (global_batch_size // replicas) * replicas)


def _main(argv):
    from absl import flags

    from keras_nfnet.jobs import app
    from keras_nfnet.training.callbacks import TrainingDiverged

    del argv  # cli.run refuses stray arguments
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    validate(config)
    print(f"TensorBoard logs: {workdir}/tensorboard  (tensorboard --logdir {workdir}/tensorboard)", flush=True)
    try:
        result = pretrain(config, workdir)
    except TrainingDiverged as error:
        from keras_nfnet import cli

        return cli.report(error, app.DIVERGED)
    m = result["metrics"]
    print(f"{result['status']} at step {result['step']}/{result['total_steps']}: held-out loss "
          f"{m['heldout_loss']:.4f}, {m['flops']:.3g} training FLOPs, {m['device_hours']:.3g} device-hours",
          flush=True)
    print(f"final weights sha256: {m['weights_sha256']}", flush=True)
    print(f"TensorBoard logs: {result['tensorboard_dir']}", flush=True)
    return app.PREEMPTED if result["status"] == "preempted" else 0


def main():
    """The console script `nfnet-pretrain` (and `python -m keras_nfnet.jobs.pretrain`)."""
    from keras_nfnet.jobs import app

    app.define_flags()
    app.run(_main)


if __name__ == "__main__":
    main()
