"""The fine-tuning job: a pretrained NFNet (or ViT) on a new labelled corpus: new head, higher resolution, the NFNet
fine-tuning recipe (NFNET_SPEC.md section 4), and top-1/top-5 evaluation with raw and EMA weights.

    python -m keras_nfnet.jobs.finetune --config.source=/runs/pretrain --config.corpus=/data/digits \
        --config.image_size=48 --config.epochs=5 --workdir=/runs/ft
    nfnet-finetune --config=finetune --config.from_scratch --config.variant=S0 --config.corpus=... --workdir=...

    from keras_nfnet.jobs import config, finetune
    result = finetune.finetune(config.load("finetune", source="/runs/pretrain", corpus="/data/digits"), "/runs/ft")

`source` is anything `keras_nfnet.jobs.sources` loads (a pretraining work directory, one checkpoint directory, a
`.keras` model file, a preset directory such as released weights converted by `trainers/convert_weights.py`);
`from_scratch=True` with a `variant` instead trains that architecture from random initialisation with the same
budget (the baseline a fine-tuning result should beat). The work directory receives `config.json` (the config the
run started with), `checkpoints/`, `result.json`, `model.keras` (final weights), `model_ema.keras` (weight averages,
when `ema`) and TensorBoard logs.

Checkpoints and resume are the pretraining job's (keras_nfnet.jobs.context): a checkpoint every
`checkpoint_every_steps`, at the end and on SIGTERM; re-running the same command resumes from the newest intact one
at the exact step and data position (weights, optimizer state with AGC's variables and the EMA averages, random
generators), and a finished run (result.json present) is not trained again. A resume with a config that changes
the result is refused, naming the changed fields.

The evaluation view is (eval_image_size, crop_fraction) (`keras_nfnet.data.preprocess.eval_image`). It is chosen
to match the training view: with the Inception crop (`crop=True`, ImageNet-like data) the papers' protocol,
evaluation at image_size + 32 with crop fraction size / (size + 32); without it (`crop=False`: the image as a
whole is what the model learns from) the whole image at the training resolution. It is stored in both saved
models (NFNet's `eval_image_size` and `crop_fraction`), so evaluation, export and serving see images alike.
"""
import logging
import math
import os

import keras
import tensorflow as tf

from keras_nfnet import architectures, storage
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs import context
from keras_nfnet.jobs import defaults
from keras_nfnet.jobs.evaluate import find_eval_split, topk_accuracy
from keras_nfnet.jobs.sources import load_model as load_pretrained

log = logging.getLogger(__name__)

# Fields that may change between a run and its resumption: they change how work is executed, not its result.
RESUME_SAFE = frozenset({
    "strategy", "num_cpu_devices", "verbose", "checkpoint_every_steps", "keep_checkpoints", "max_steps",
    "eval_batch_size",
    "corpus",  # the corpus may move; its content is checked by fingerprint (corpus_sha256)
    "on_bad_record", "verify_checksums",  # as for pretraining: skips are reported; checksums verified at first open
})


def validate(config):
    """Raise ValueError naming every bad field of `config`, before any heavy work."""
    from keras_nfnet.data import corpus as corpus_lib
    from keras_nfnet.data import pipeline
    from keras_nfnet.sam import REDUCTIONS
    from keras_nfnet.training.strategy import KINDS

    problems = config_lib.check_fields(config, defaults.finetune())
    if problems:
        raise ValueError("bad fine-tuning config:\n  - " + "\n  - ".join(problems))
    if not config.corpus or not storage.exists(storage.join(config.corpus, corpus_lib.METADATA_FILE)):
        problems.append(f"corpus must be a corpus directory holding {corpus_lib.METADATA_FILE}; got {config.corpus!r}")
    if config.source and config.from_scratch:
        problems.append(f"give either source ({config.source!r}) or from_scratch, not both")
    elif not config.source and not config.from_scratch:
        problems.append("give source (a pretrain workdir, a checkpoint directory, a .keras file or a preset) to "
                        "fine-tune, or from_scratch=True with a variant to train from random initialisation")
    if config.from_scratch and config.variant not in architectures.known_names():
        problems.append(f"training from scratch needs variant, one of {architectures.known_names()}; got "
                        f"{config.variant!r}")
    if config.source and not storage.exists(config.source):
        problems.append(f"source {config.source} does not exist (a pretrain workdir, a checkpoint directory, a "
                        ".keras file or a preset directory)")
    for name in ("image_size", "eval_image_size", "eval_batch_size"):
        if getattr(config, name) < 0:
            problems.append(f"{name} must be >= 0 (0 = default); got {getattr(config, name)}")
    if config.crop_fraction != 0 and not 0 < config.crop_fraction <= 1:
        problems.append(f"crop_fraction must be in (0, 1] (1 = the whole image) or 0 (default: from crop); got "
                        f"{config.crop_fraction:g}")
    if not (config.epochs > 0 and math.isfinite(config.epochs)) or config.global_batch_size < 1:
        problems.append(f"epochs must be > 0 and global_batch_size >= 1; got {config.epochs}, "
                        f"{config.global_batch_size}")
    elif config.repeats < 1 or config.global_batch_size % config.repeats:
        problems.append(f"repeats must be >= 1 and divide global_batch_size {config.global_batch_size}; "
                        f"got {config.repeats}")
    if config.on_bad_record not in pipeline.BAD_RECORD_POLICIES:
        problems.append(f"on_bad_record must be one of {pipeline.BAD_RECORD_POLICIES}; got {config.on_bad_record!r}")
    if config.sam_reduction not in REDUCTIONS:
        problems.append(f"sam_reduction must be one of {REDUCTIONS}; got {config.sam_reduction!r}")
    if not 0 <= config.stochastic_depth_rate < 1 or config.dropout_rate >= 1:
        problems.append("stochastic_depth_rate must be in [0, 1) and dropout_rate < 1")
    if config.ema and not 0 < config.ema_max_decay < 1:
        problems.append(f"ema_max_decay must be in (0, 1); got {config.ema_max_decay}")
    if config.warmup_epochs < 0:
        problems.append(f"warmup_epochs must be >= 0; got {config.warmup_epochs:g}")
    if config.strategy not in KINDS:
        problems.append(f"unknown strategy {config.strategy!r}; accepted: {', '.join(KINDS)}")
    for name in ("checkpoint_every_steps", "keep_checkpoints"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be >= 1; got {getattr(config, name)}")
    if config.max_steps < 0:
        problems.append(f"max_steps must be 0 (off) or > 0; got {config.max_steps}")
    if problems:
        raise ValueError("bad fine-tuning config:\n  - " + "\n  - ".join(problems))


def eval_view(config, image_size):
    """(eval_image_size, crop_fraction) of a run: the explicit settings, else the view that matches training."""
    from keras_nfnet.data import preprocess

    if config.crop:  # Inception-crop training: the papers' view, above the training resolution (FixRes)
        eval_size = config.eval_image_size or image_size + preprocess.EVAL_PADDING
        return eval_size, config.crop_fraction or preprocess.paper_crop_fraction(eval_size)
    # The model learnt from whole images at image_size: show it whole images at that size.
    return config.eval_image_size or image_size, config.crop_fraction or 1.0


def augmentations(config):
    """The training view in words, for the log: which augmentations apply."""
    parts = ["Inception crop (8-100% of the area, aspect 3/4-4/3)" if config.crop else "whole image (no crop)",
             "horizontal flip" if config.flip else "no flip"]
    if config.randaugment_layers:
        parts.append(f"RandAugment {config.randaugment_layers} layers, magnitude {config.randaugment_magnitude:g}")
    if config.mixup_cutmix:
        parts.append("MixUp/CutMix")
    if config.repeats > 1:
        parts.append(f"repeated augmentation x{config.repeats}")
    return ", ".join(parts) + ", bicubic resize"


def describe_eval_view(eval_size, crop_fraction):
    from keras_nfnet.data import preprocess

    resize = preprocess.eval_resize_size(eval_size, crop_fraction)
    if resize == eval_size:
        return f"whole image resized to {eval_size} px (crop fraction {crop_fraction:g})"
    return f"resize to {resize} px, centre-crop {eval_size} px (crop fraction {crop_fraction:.4g})"


def replace_head(pretrained, num_classes, dropout_rate=None, stochastic_depth_rate=0.1, dtype=None,
                 eval_image_size=None, crop_fraction=None):
    """A new model (NFNet or ViT) of the same variant with a fresh `num_classes` classifier and every other weight
    copied.

    Dropout and stochastic depth are the fine-tuning overrides (they have no weights); eval_image_size and
    crop_fraction the new model's evaluation view. The input is resolution-agnostic, so the model trains and
    evaluates at any size. Returns (model, names of copied layers).
    """
    from keras_nfnet.models import NFNet

    nfnet_only = ({"activation": pretrained.activation, "numerics": pretrained.numerics}
                  if isinstance(pretrained, NFNet) else {})
    model = architectures.build(pretrained.variant, num_classes=num_classes,
                                stochastic_depth_rate=stochastic_depth_rate, dropout_rate=dropout_rate,
                                input_shape=(None, None, 3), dtype=dtype, eval_image_size=eval_image_size,
                                crop_fraction=crop_fraction, **nfnet_only)
    copied = []
    for layer in model.layers:
        if not layer.weights or layer.name == "classifier":
            continue
        source = pretrained.get_layer(layer.name)
        values = source.get_weights()
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise ValueError(f"layer {layer.name}: pretrained shapes {[v.shape for v in values]} do not match")
        layer.set_weights(values)
        copied.append(layer.name)
    return model, copied


def finetune(config, workdir, strategy=None):
    """Run (or resume) the fine-tuning job; returns the result dict (keras_nfnet.jobs.context), written to
    result.json when the budget is done. A finished run's result is returned without training again.
    Raises TrainingDiverged when the loss becomes NaN/inf (the last good checkpoint is left intact)."""
    from keras_nfnet.data import corpus as corpus_lib
    from keras_nfnet.data import pipeline
    from keras_nfnet.data import preprocess
    from keras_nfnet.data import verify
    from keras_nfnet.ema import ema_weights
    from keras_nfnet.losses import recipe_loss
    from keras_nfnet.optimizers import nfnet_optimizer
    from keras_nfnet.sam import enable_sam
    from keras_nfnet.training import callbacks as cb

    clock = context.Clock()
    validate(config)
    context.check_workdir(workdir)
    info = corpus_lib.load_metadata(config.corpus)
    num_train = info.split(config.train_split).num_examples
    eval_split = find_eval_split(info, config.eval_split)  # fails early, naming the known splits
    for split in (config.train_split, eval_split):  # a damaged corpus fails before anything is written
        verify.open_split(info, split).close()
    new_run = not storage.exists(storage.join(workdir, config_lib.SAVED_CONFIG))
    if new_run and config.verify_checksums:  # a resumed run's corpus is the same by its fingerprint
        verify.verify_checksums(info, [config.train_split, eval_split])
    context.prepare_workdir(workdir, dict(config_lib.as_dict(config),
                                          corpus_sha256=context.corpus_fingerprint(config.corpus)), RESUME_SAFE,
                            defaults=config_lib.as_dict(defaults.finetune()))
    finished = context.read_result(workdir)
    if finished is not None:
        print(f"{workdir} holds a finished run ({context.RESULT_FILE}): not training again (use a new workdir to "
              "train again)", flush=True)
        return finished
    reports = ({"train": pipeline.BadRecordReport(), "eval": pipeline.BadRecordReport()}
               if config.on_bad_record == "skip" else {})
    if strategy is None:
        strategy = context.make_strategy(config)
    pretrained = load_pretrained(config.source) if config.source else None
    variant = pretrained.variant if pretrained is not None else config.variant
    row = architectures.get_row(variant)
    image_size = config.image_size or row.test_image_size
    eval_size, crop_fraction = eval_view(config, image_size)
    steps = max(1, int(round(config.epochs * num_train / config.global_batch_size)))
    last_step = min(steps, config.max_steps) if config.max_steps else steps  # max_steps keeps the schedule of steps
    # The cosine needs at least one step after the warm-up: a short run (epochs=1 with the default warm-up of
    # one epoch) gets a warm-up of half its steps, reported below.
    asked_warmup = int(round(config.warmup_epochs * num_train / config.global_batch_size))
    warmup = min(asked_warmup, steps // 2) if asked_warmup >= steps else asked_warmup
    dropout = None if config.dropout_rate < 0 else config.dropout_rate
    print(f"{'fine-tuning' if pretrained is not None else 'training'} {variant} "
          f"{'from ' + config.source if pretrained is not None else 'from scratch (random initialisation)'} on "
          f"{config.corpus} ({info.num_classes} classes, {num_train} train images) at {image_size} px: {steps} "
          f"steps of {config.global_batch_size} ({config.epochs:g} epochs, repeats {config.repeats}), warm-up "
          f"{warmup} steps" + (f" (clamped from {asked_warmup}: the run has {steps})" if warmup != asked_warmup
                               else "")
          + f", SAM rho {config.sam_rho if config.sam_rho > 0 else 'off'}, AGC "
          f"{config.agc_clip if config.agc_clip > 0 else 'off'}, EMA {'on' if config.ema else 'off'}", flush=True)
    print(f"training view: {augmentations(config)}", flush=True)
    print(f"evaluation view: {describe_eval_view(eval_size, crop_fraction)}", flush=True)

    context.seed(config.seed)
    with strategy.scope():
        if pretrained is not None:
            model, copied = replace_head(pretrained, info.num_classes, dropout, config.stochastic_depth_rate,
                                         eval_image_size=eval_size, crop_fraction=crop_fraction)
            log.info("copied %d pretrained layers; new classifier for %d classes", len(copied), info.num_classes)
        else:
            model = architectures.build(variant, num_classes=info.num_classes, dropout_rate=dropout,
                                        stochastic_depth_rate=config.stochastic_depth_rate, input_shape=(None, None, 3),
                                        eval_image_size=eval_size, crop_fraction=crop_fraction)
        optimizer = nfnet_optimizer(base_learning_rate=config.base_learning_rate,
                                    batch_size=config.global_batch_size, total_steps=steps, warmup_steps=warmup,
                                    weight_decay=config.weight_decay,
                                    clip_factor=config.agc_clip if config.agc_clip > 0 else None,
                                    momentum=config.momentum, use_ema=config.ema, ema_max_decay=config.ema_max_decay)
    sam = ((lambda m: enable_sam(m, rho=config.sam_rho, reduction=config.sam_reduction)) if config.sam_rho > 0
           else None)
    context.compile_model(model, strategy, optimizer, recipe_loss(info.multi_label, config.label_smoothing),
                          before_build=sam)
    manager = context.checkpoint_manager(workdir, config.keep_checkpoints)
    start_step, _ = context.resume(manager, model, steps, config.global_batch_size, num_train, reports)

    def train_fn(ctx):
        return pipeline.train_dataset(config.corpus, config.train_split, config.global_batch_size, image_size,
                                      config.seed, start_step=start_step, input_context=ctx, crop=config.crop,
                                      flip=config.flip, repeats=config.repeats, mixup_cutmix=config.mixup_cutmix,
                                      randaugment_layers=config.randaugment_layers,
                                      randaugment_magnitude=config.randaugment_magnitude,
                                      on_bad_record=config.on_bad_record, bad_record_report=reports.get("train"))

    writer = context.tensorboard_writer(workdir)
    interval = max(1, min(steps, int(math.ceil(num_train / config.global_batch_size))))  # about one epoch
    final, guard, preemption = _FinalWeights(), cb.DivergenceGuard(), cb.PreemptionSignal(strategy=strategy)
    checkpointing = cb.Checkpointing(manager, config.checkpoint_every_steps,
                                     context.checkpoint_state(model, steps, reports), guard, preemption)

    def suspects():  # where an anonymous image-decoding error in fit can come from: the steps being read
        step = int(model.optimizer.iterations)
        return [(config.train_split, pipeline.train_step_records(
            config.corpus, config.train_split, config.global_batch_size, config.seed, step, config.repeats))]

    try:
        try:
            with pipeline.naming_bad_records(config.corpus, suspects):
                if start_step < last_step:
                    progress = [cb.StepProgress(steps, config.global_batch_size, num_train)] if config.verbose else []
                    model.fit(strategy.distribute_datasets_from_function(train_fn), epochs=-(-last_step // interval),
                              initial_epoch=start_step // interval, steps_per_epoch=interval, verbose=0,
                              shuffle=False,  # the sampler shuffles already
                              # StopAtStep ends the last, partial interval exactly where the run stops.
                              callbacks=[guard, cb.StopAtStep(last_step), _TrainScalars(writer), checkpointing,
                                         final] + progress)
                    # With use_ema, `fit` ends by copying the weight averages into the model: put the final raw
                    # weights back (the averages are evaluated from the optimizer below).
                    for variable, value in zip(model.trainable_variables, final.values):
                        variable.assign(value)
        finally:
            preemption.restore()
        context.raise_if_diverged(guard, manager, f"lower base_learning_rate (now {config.base_learning_rate}) and "
                                                  "start a new workdir.")
        step = int(model.optimizer.iterations.numpy())
        if step < steps:  # max_steps or SIGTERM: checkpointed; the evaluation waits for the end of the budget
            status = "preempted" if checkpointing.preempted_at is not None else "stopped"
            print(f"{status} at step {step} of {steps}; run the same command again to go on", flush=True)
            return context.result("finetune", status, workdir, config, {}, step, steps, clock.seconds(),
                                  {split: report.counts() for split, report in reports.items()})

        eval_batch = config.eval_batch_size or config.global_batch_size
        evaluated = {}
        weights_sha256 = context.weights_fingerprint(model)
        if config.ema:
            with ema_weights(model):  # evaluate and save the weight averages, then the raw weights come back
                evaluated["ema"] = topk_accuracy(model, config.corpus, eval_split, eval_size, eval_batch,
                                                 on_bad_record=config.on_bad_record,
                                                 bad_record_report=reports.get("eval"))
                with storage.staged_dir(workdir) as local:  # Keras writes .keras files locally; uploaded on exit
                    model.save(os.path.join(local, "model_ema.keras"))
        evaluated["raw"] = topk_accuracy(model, config.corpus, eval_split, eval_size, eval_batch,
                                         on_bad_record=config.on_bad_record, bad_record_report=reports.get("eval"))
        with storage.staged_dir(workdir) as local:
            model.save(os.path.join(local, "model.keras"))
        best = max(evaluated, key=lambda k: evaluated[k]["top1"])
        metrics = {
            "top1": evaluated["raw"]["top1"], "top5": evaluated["raw"]["top5"],
            "top1_ema": evaluated["ema"]["top1"] if config.ema else None,
            "top5_ema": evaluated["ema"]["top5"] if config.ema else None,
            "eval_loss": evaluated["raw"]["loss"], "eval_examples": evaluated["raw"]["examples"],
            "best_weights": best,
            "best_model": storage.join(storage.abspath(workdir), "model.keras" if best == "raw" else
                                       "model_ema.keras"),
            "variant": variant, "source": config.source or None, "from_scratch": pretrained is None,
            "eval_split": eval_split, "image_size": image_size, "eval_image_size": eval_size,
            "crop_fraction": crop_fraction, "eval_resize": preprocess.eval_resize_size(eval_size, crop_fraction),
            "training_view": augmentations(config), "warmup_steps": warmup,
            "train_images_seen": steps * config.global_batch_size, "class_names": list(info.class_names),
            "weights_sha256": weights_sha256,
        }
        bad_records = {split: report.counts() for split, report in reports.items()}  # distinct, per reason
        with writer.as_default():
            for name in ("top1", "top5", "top1_ema", "top5_ema"):
                if metrics[name] is not None:
                    tf.summary.scalar(f"eval/{name}", metrics[name], step=steps)
            for split, counts in bad_records.items():
                for reason, count in counts.items():
                    tf.summary.scalar(f"bad_records/{split}/{reason}", count, step=steps)
    finally:
        writer.close()
    result = context.result("finetune", "done", workdir, config, metrics, step, steps, clock.seconds(), bad_records)
    context.write_result(workdir, result)
    line = f"{eval_split} ({metrics['eval_examples']} images, {eval_size} px, crop fraction " \
           f"{crop_fraction:g}): top-1 {metrics['top1']:.4f} top-5 {metrics['top5']:.4f}"
    if config.ema:
        line += f"; EMA top-1 {metrics['top1_ema']:.4f} top-5 {metrics['top5_ema']:.4f}"
    print(line + f"; result in {storage.join(workdir, context.RESULT_FILE)}", flush=True)
    return result



class _FinalWeights(keras.callbacks.Callback):
    """Keeps the trainable weights at the end of the last epoch: with `use_ema`, Keras replaces them by the
    weight averages when `fit` returns, and the raw weights are what the run goes on from."""

    values = None

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training or epoch + 1 == self.params["epochs"]:
            self.values = [v.numpy() for v in self.model.trainable_variables]


class _TrainScalars(keras.callbacks.Callback):
    def __init__(self, writer):
        super().__init__()
        self.writer = writer

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        with self.writer.as_default():
            for name, value in (logs or {}).items():
                tf.summary.scalar(f"finetune/{name}", float(value), step=step)
        self.writer.flush()


def _main(argv):
    from absl import flags

    from keras_nfnet import cli
    from keras_nfnet.jobs import app
    from keras_nfnet.training.callbacks import TrainingDiverged

    del argv
    try:
        result = finetune(flags.FLAGS.config, flags.FLAGS.workdir)
    except TrainingDiverged as error:
        return cli.report(error, app.DIVERGED)
    return app.PREEMPTED if result["status"] == "preempted" else 0


def main():
    """The console script `nfnet-finetune` (and `python -m keras_nfnet.jobs.finetune`); --config defaults to the
    shipped recipe (keras_nfnet/configs/finetune.py)."""
    from keras_nfnet.jobs import app

    app.define_flags("finetune", workdir_help="holds config.json, checkpoints/, result.json, model.keras, "
                                             "model_ema.keras, TensorBoard logs")
    app.run(_main)


if __name__ == "__main__":
    main()
