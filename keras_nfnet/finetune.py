"""Fine-tuning a pretrained NFNet on a new labelled corpus: new head, higher resolution, the NFNet fine-tuning
recipe (NFNET_SPEC.md section 4), and top-1/top-5 evaluation with raw and EMA weights.

    from keras_nfnet.finetune import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(source="/runs/pretrain", corpus="/data/digits", image_size=48,
                                     eval_image_size=64, epochs=5, sam_rho=0.05), workdir="/runs/ft")

`source` is a pretraining work directory (its newest checkpoint is used), one checkpoint directory
(`.../checkpoints/ckpt-<step>`), a `.keras` model file, or a preset directory (`keras_nfnet.presets`, e.g. released
weights converted by `trainers/convert_weights.py`); `from_scratch=True` with a `variant` instead trains that
architecture from random initialisation with the same budget (the baseline a fine-tuning result should beat).
The work directory receives `results.json`, `model.keras` (final weights), `model_ema.keras` (weight averages,
when `ema`) and TensorBoard logs.

The evaluation view is (eval_image_size, crop_fraction) (`keras_nfnet.data.preprocess.eval_image`). It is chosen
to match the training view: with the Inception crop (`crop=True`, ImageNet-like data) the papers' protocol,
evaluation at image_size + 32 with crop fraction size / (size + 32); without it (`crop=False`: the image as a
whole is what the model learns from) the whole image at the training resolution. It is stored in both saved
models (NFNet's `eval_image_size` and `crop_fraction`), so evaluation, export and serving see images alike.
"""
import dataclasses
import json
import logging
import math
import os
import time
import typing

import keras
import numpy as np
import tensorflow as tf

from keras_nfnet import architectures, storage
from keras_nfnet.data import corpus as corpus_lib
from keras_nfnet.data import pipeline
from keras_nfnet.data import preprocess
from keras_nfnet.data import verify
from keras_nfnet.losses import recipe_loss
from keras_nfnet.models import NFNet
from keras_nfnet.optimizers import nfnet_optimizer
from keras_nfnet.sam import REDUCTIONS, enable_sam
from keras_nfnet.training import keras_workarounds
from keras_nfnet.training import strategy as strategy_lib
from keras_nfnet.training.callbacks import StepProgress, StopAtStep, SummaryWriter
from keras_nfnet.training.checkpoint import WEIGHTS_FILE, CheckpointManager

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
# Evaluation split names the converters write (image folders' "test", TFDS's "test" / "validation") and the
# pretraining corpora's "holdout", in the order a job looks for them.
EVAL_SPLITS = ("test", "validation", "holdout")


@dataclasses.dataclass
class FinetuneConfig:
    # what to start from
    source: str = ""               # pretrain workdir | checkpoint dir | .keras file | preset dir
    from_scratch: bool = False     # no source: train `variant` from random initialisation (the baseline)
    variant: str = ""              # architecture when training from scratch (ignored otherwise)
    # data
    corpus: str = ""
    train_split: str = "train"
    eval_split: str = ""           # "" = the first of EVAL_SPLITS the corpus has
    image_size: int = 0            # fine-tuning px; 0 = the variant's test resolution (higher than pretraining)
    eval_image_size: int = 0       # evaluation px; 0 = image_size + 32 with crop (NFNET_SPEC), else image_size
    crop_fraction: float = 0.0     # evaluation view: resize to eval px / crop_fraction, centre-crop eval px;
                                   # 0 = size / (size + 32) with crop (the papers' view), 1.0 (whole image) without
    crop: bool = True              # Inception crop (8-100% of the area): ImageNet-like photos; off when the
                                   # content fills the frame (digits, documents, centred objects)
    flip: bool = True              # horizontal flip: off when mirrored images mean something else (text, digits)
    randaugment_layers: int = 0
    randaugment_magnitude: float = 10.0
    mixup_cutmix: bool = False
    on_bad_record: str = "raise"   # raise | skip (weight 0, counted per reason in results.json); docs/data.md
    verify_checksums: bool = True  # SHA-256 of the corpus files read, before training
    repeats: int = 1               # repeated augmentation multiplicity K; steps unchanged (compute kept equal)
    # recipe ([NF]'s JFT fine-tuning, scaled to small batches)
    epochs: float = 10.0
    global_batch_size: int = 64
    base_learning_rate: float = 0.1  # per 256 examples
    warmup_epochs: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-5
    agc_clip: float = 0.01         # <= 0 turns AGC off
    label_smoothing: float = 0.0
    dropout_rate: float = 0.25     # < 0 = the variant's
    stochastic_depth_rate: float = 0.1
    ema: bool = True
    ema_max_decay: float = 0.9999
    sam_rho: float = 0.05          # <= 0 turns SAM off
    sam_reduction: str = "global"
    # execution
    strategy: str = "default"
    num_cpu_devices: int = 2
    eval_batch_size: int = 0       # 0 = global_batch_size
    seed: int = 0
    verbose: int = 1               # one progress line per corpus epoch (> 0), none (0)

    def to_dict(self):
        return dataclasses.asdict(self)


def define_flags(flag_values=None):
    """Define one absl flag per FinetuneConfig field (same name, same default): the command-line apps' flags."""
    from absl import flags

    flag_values = flag_values or flags.FLAGS
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
    types = typing.get_type_hints(FinetuneConfig)
    for field in dataclasses.fields(FinetuneConfig):
        define[types[field.name]](field.name, field.default, f"FinetuneConfig.{field.name}", flag_values=flag_values)


def config_from_flags(flag_values=None):
    """The FinetuneConfig that the flags of `define_flags` describe."""
    from absl import flags

    flag_values = flag_values or flags.FLAGS
    return FinetuneConfig(**{f.name: flag_values[f.name].value for f in dataclasses.fields(FinetuneConfig)})


def validate(config):
    """Raise ValueError for a bad config before any heavy work."""
    if not config.corpus or not storage.exists(storage.join(config.corpus, corpus_lib.METADATA_FILE)):
        raise ValueError(f"corpus must be a corpus directory holding {corpus_lib.METADATA_FILE}; got {config.corpus!r}")
    if config.source and config.from_scratch:
        raise ValueError(f"give either source ({config.source!r}) or from_scratch, not both")
    if not config.source and not config.from_scratch:
        raise ValueError("give source (a pretrain workdir, a checkpoint directory, a .keras file or a preset) to fine-tune, "
                         "or from_scratch=True with a variant to train from random initialisation")
    if config.from_scratch and config.variant not in architectures.known_names():
        raise ValueError(f"training from scratch needs variant, one of {architectures.known_names()}; got "
                         f"{config.variant!r}")
    if config.source and not storage.exists(config.source):
        raise FileNotFoundError(f"source {config.source} does not exist (a pretrain workdir, a checkpoint "
                                "directory, a .keras file or a preset directory)")
    for name in ("image_size", "eval_image_size", "eval_batch_size"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0 = default); got {getattr(config, name)}")
    if config.crop_fraction != 0 and not 0 < config.crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1] (1 = the whole image) or 0 (default: from crop); got "
                         f"{config.crop_fraction:g}")
    if config.epochs <= 0 or config.global_batch_size < 1:
        raise ValueError(f"epochs must be > 0 and global_batch_size >= 1; got {config.epochs}, "
                         f"{config.global_batch_size}")
    if config.repeats < 1 or config.global_batch_size % config.repeats:
        raise ValueError(f"repeats must be >= 1 and divide global_batch_size {config.global_batch_size}; "
                         f"got {config.repeats}")
    if config.on_bad_record not in pipeline.BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {pipeline.BAD_RECORD_POLICIES}; got {config.on_bad_record!r}")
    if config.sam_reduction not in REDUCTIONS:
        raise ValueError(f"sam_reduction must be one of {REDUCTIONS}; got {config.sam_reduction!r}")
    if not 0 <= config.stochastic_depth_rate < 1 or config.dropout_rate >= 1:
        raise ValueError("stochastic_depth_rate must be in [0, 1) and dropout_rate < 1")
    if config.ema and not 0 < config.ema_max_decay < 1:
        raise ValueError(f"ema_max_decay must be in (0, 1); got {config.ema_max_decay}")
    if config.warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0; got {config.warmup_epochs:g}")


def find_eval_split(info, eval_split=""):
    """The split to evaluate: `eval_split` if given (ValueError naming the corpus' splits if missing), else the
    first of EVAL_SPLITS the corpus has."""
    if eval_split:
        info.split(eval_split)
        return eval_split
    for name in EVAL_SPLITS:
        if name in info.splits:
            return name
    raise ValueError(f"corpus {info.directory} has none of the evaluation splits {EVAL_SPLITS} (it has "
                     f"{sorted(info.splits)}): pass eval_split")


def eval_view(config, image_size):
    """(eval_image_size, crop_fraction) of a run: the explicit settings, else the view that matches training."""
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
    resize = preprocess.eval_resize_size(eval_size, crop_fraction)
    if resize == eval_size:
        return f"whole image resized to {eval_size} px (crop fraction {crop_fraction:g})"
    return f"resize to {resize} px, centre-crop {eval_size} px (crop fraction {crop_fraction:.4g})"


# --- the pretrained model -------------------------------------------------------------------------------------

def _checkpoint_weights(source):
    """(weights file, pretrain config dict) for a pretrain workdir or one of its checkpoint directories."""
    # "ckpt-00120/" (shell completion) names the same directory
    source = source.rstrip("/") if storage.is_remote(source) else os.path.normpath(source)
    if storage.exists(storage.join(source, WEIGHTS_FILE)):
        weights, workdir = storage.join(source, WEIGHTS_FILE), storage.dirname(storage.dirname(source))
    else:
        step = CheckpointManager(storage.join(source, "checkpoints"), write=False).latest_step()
        if step is None:
            raise FileNotFoundError(f"{source} holds no checkpoint: expected a pretrain workdir (checkpoints/"
                                    f"ckpt-<step>/{WEIGHTS_FILE}), a checkpoint directory or a .keras file")
        weights = storage.join(CheckpointManager(storage.join(source, "checkpoints"), write=False).path(step),
                               WEIGHTS_FILE)
        workdir = source
    config_path = storage.join(workdir, "config.json")
    if not storage.exists(config_path):
        raise FileNotFoundError(f"no config.json next to the checkpoint ({config_path}): cannot tell its variant")
    return weights, json.loads(storage.read_text(config_path))


def _classes_in_weights(weights_file):
    """Number of classes of the checkpoint's classifier (its only top-level Dense layer)."""
    import h5py

    with h5py.File(weights_file, "r") as f:
        dense = [name for name in f["layers"] if name == "dense" or name.startswith("dense_")]
        if len(dense) != 1:
            raise ValueError(f"{weights_file}: expected one classifier Dense layer, found {dense}")
        return int(f["layers"][dense[0]]["vars"]["0"].shape[-1])


def load_pretrained(source):
    """The pretrained NFNet or ViT (weights loaded, not compiled) from a workdir, checkpoint dir, .keras file or
    preset."""
    from keras_nfnet import presets
    from keras_nfnet.vit import ViT

    if presets.is_preset(source):
        return presets.load_nfnet(source)
    if source.endswith(".keras"):
        model = keras.saving.load_model(storage.fetch_file(source), compile=False)
        if not isinstance(model, (NFNet, ViT)):
            raise ValueError(f"{source} holds a {type(model).__name__}, not a keras_nfnet NFNet or ViT")
        return model
    weights, pre = _checkpoint_weights(source)
    weights = storage.fetch_file(weights)  # h5py reads local files
    model = architectures.build(pre["variant"], num_classes=_classes_in_weights(weights), stochastic_depth_rate=0.0,
                                dropout_rate=0.0)
    try:
        model.load_weights(weights)
    except Exception as err:  # noqa: BLE001 - h5py/Keras raise many kinds for a damaged file
        raise ValueError(f"checkpoint weights {weights} do not load ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); name an intact checkpoint directory "
                         "as source") from err
    log.info("loaded %s (%s) from %s", pre["variant"], model.num_classes, weights)
    return model


def replace_head(pretrained, num_classes, dropout_rate=None, stochastic_depth_rate=0.1, dtype=None,
                 eval_image_size=None, crop_fraction=None):
    """A new model (NFNet or ViT) of the same variant with a fresh `num_classes` classifier and every other weight
    copied.

    Dropout and stochastic depth are the fine-tuning overrides (they have no weights); eval_image_size and
    crop_fraction the new model's evaluation view. The input is resolution-agnostic, so the model trains and
    evaluates at any size. Returns (model, names of copied layers).
    """
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


# --- evaluation -----------------------------------------------------------------------------------------------

_MODEL_VIEW = "model"


def topk_accuracy(model, corpus, split, image_size, batch_size, ks=(1, 5), crop_fraction=_MODEL_VIEW,
                  on_bad_record="raise", bad_record_report=None):
    """{"top1", "top5", "loss", "examples"} over every example of `split` (evaluation preprocessing).

    The evaluation view is (image_size, crop_fraction); crop_fraction defaults to the model's own (NFNet's
    `crop_fraction`; None there, or a model without one, means the papers' size / (size + 32)). A prediction
    counts as correct at k when any of its k best classes is a label of the example (for single-label corpora:
    the label is among the k best). k is capped at the number of classes.
    """
    if crop_fraction == _MODEL_VIEW:
        crop_fraction = getattr(model, "crop_fraction", None)
    ds = pipeline.eval_dataset(corpus, split, batch_size, image_size, crop_fraction=crop_fraction,
                               on_bad_record=on_bad_record, bad_record_report=bad_record_report)
    predict = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32))
    correct = {k: 0.0 for k in ks}
    loss_sum, count = 0.0, 0.0
    with pipeline.naming_bad_records(corpus, lambda: [(split, None)]):
        for images, labels, weights in ds:
            logits = predict(images).numpy()
            labels, weights = labels.numpy(), weights.numpy()
            order = np.argsort(-logits, axis=-1, kind="stable")
            for k in ks:
                hit = np.take_along_axis(labels, order[:, :min(k, logits.shape[-1])], axis=-1).max(axis=-1) > 0
                correct[k] += float((hit * weights).sum())
            log_probs = logits - logits.max(-1, keepdims=True)
            log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
            targets = labels / np.maximum(labels.sum(-1, keepdims=True), 1)
            loss_sum += float((-(targets * log_probs).sum(-1) * weights).sum())
            count += float(weights.sum())
    if count == 0:
        raise ValueError(f"split {split!r} of {corpus} has no examples to evaluate")
    return {**{f"top{k}": correct[k] / count for k in ks}, "loss": loss_sum / count, "examples": int(count)}


# --- the job --------------------------------------------------------------------------------------------------

class _FinalWeights(keras.callbacks.Callback):
    """Keeps the trainable weights at the end of the last epoch: with `use_ema`, Keras replaces them by the
    weight averages when `fit` returns, and the raw weights are evaluated too."""

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


def finetune(config, workdir, strategy=None):
    """Run the fine-tuning job; returns the results dict (also written to `<workdir>/results.json`)."""
    validate(config)
    started = time.time()
    if storage.exists(workdir) and not storage.isdir(workdir):
        raise ValueError(f"workdir {workdir} exists and is not a directory; choose a directory path")
    info = corpus_lib.load_metadata(config.corpus)
    num_train = info.split(config.train_split).num_examples
    eval_split = find_eval_split(info, config.eval_split)  # fails early, naming the known splits
    for split in (config.train_split, eval_split):  # a damaged corpus fails before anything is written
        verify.open_split(info, split).close()
    if config.verify_checksums:
        verify.verify_checksums(info, [config.train_split, eval_split])
    storage.makedirs(workdir)
    reports = ({"train": pipeline.BadRecordReport(), "eval": pipeline.BadRecordReport()}
               if config.on_bad_record == "skip" else {})
    if strategy is None:
        strategy = strategy_lib.make_strategy(config.strategy, config.num_cpu_devices)
    pretrained = load_pretrained(config.source) if config.source else None
    variant = pretrained.variant if pretrained is not None else config.variant
    row = architectures.get_row(variant)
    image_size = config.image_size or row.test_image_size
    eval_size, crop_fraction = eval_view(config, image_size)
    steps = max(1, int(round(config.epochs * num_train / config.global_batch_size)))
    # The cosine needs at least one step after the warm-up: a short run (--epochs=1 with the default warm-up of
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

    keras.utils.set_random_seed(config.seed)
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
        model.compile(optimizer=optimizer, jit_compile=False,
                      loss=recipe_loss(info.multi_label, config.label_smoothing))
        if config.sam_rho > 0:
            enable_sam(model, rho=config.sam_rho, reduction=config.sam_reduction)
        optimizer.build(model.trainable_variables)
    keras_workarounds.apply(model, strategy)

    def train_fn(ctx):
        return pipeline.train_dataset(config.corpus, config.train_split, config.global_batch_size, image_size,
                                      config.seed, input_context=ctx, crop=config.crop, flip=config.flip,
                                      repeats=config.repeats, mixup_cutmix=config.mixup_cutmix,
                                      randaugment_layers=config.randaugment_layers,
                                      randaugment_magnitude=config.randaugment_magnitude,
                                      on_bad_record=config.on_bad_record, bad_record_report=reports.get("train"))

    writer = SummaryWriter(storage.join(workdir, "tensorboard"))
    interval = max(1, min(steps, int(math.ceil(num_train / config.global_batch_size))))  # about one epoch
    final = _FinalWeights()

    def suspects():  # where an anonymous image-decoding error in fit can come from: the steps being read
        step = int(model.optimizer.iterations)
        return [(config.train_split, pipeline.train_step_records(
            config.corpus, config.train_split, config.global_batch_size, config.seed, step, config.repeats))]

    with pipeline.naming_bad_records(config.corpus, suspects):
        progress = [StepProgress(steps, config.global_batch_size, num_train)] if config.verbose else []
        model.fit(strategy.distribute_datasets_from_function(train_fn), epochs=-(-steps // interval),
                  steps_per_epoch=interval, verbose=0, shuffle=False,  # the sampler shuffles already
                  # StopAtStep ends the last, partial interval exactly where the learning-rate schedule ends.
                  callbacks=[StopAtStep(steps), _TrainScalars(writer), final] + progress)

    eval_batch = config.eval_batch_size or config.global_batch_size
    results = {}
    if config.ema:
        # With use_ema, `fit` ends by copying the weight averages into the model: evaluate and save those, then
        # put the final raw weights back.
        results["ema"] = topk_accuracy(model, config.corpus, eval_split, eval_size, eval_batch,
                                       on_bad_record=config.on_bad_record, bad_record_report=reports.get("eval"))
        with storage.staged_dir(workdir) as local:  # Keras writes .keras files locally; uploaded on exit
            model.save(os.path.join(local, "model_ema.keras"))
        for variable, value in zip(model.trainable_variables, final.values):
            variable.assign(value)
    results["raw"] = topk_accuracy(model, config.corpus, eval_split, eval_size, eval_batch,
                                   on_bad_record=config.on_bad_record, bad_record_report=reports.get("eval"))
    with storage.staged_dir(workdir) as local:
        model.save(os.path.join(local, "model.keras"))
    best = max(results, key=lambda k: results[k]["top1"])
    summary = {
        "top1": results["raw"]["top1"], "top5": results["raw"]["top5"],
        "top1_ema": results["ema"]["top1"] if config.ema else None,
        "top5_ema": results["ema"]["top5"] if config.ema else None,
        "eval_loss": results["raw"]["loss"], "eval_examples": results["raw"]["examples"],
        "best_weights": best, "best_model": storage.join(workdir, "model.keras" if best == "raw" else
                                                          "model_ema.keras"),
        "variant": variant, "source": config.source or None, "from_scratch": pretrained is None, "eval_split": eval_split,
        "image_size": image_size, "eval_image_size": eval_size, "crop_fraction": crop_fraction,
        "eval_resize": preprocess.eval_resize_size(eval_size, crop_fraction), "training_view": augmentations(config),
        "steps": steps, "warmup_steps": warmup, "final_step": int(model.optimizer.iterations.numpy()),
        "train_images_seen": steps * config.global_batch_size,
        "class_names": list(info.class_names), "seconds": round(time.time() - started, 1),
        "config": config.to_dict(),
        "bad_records": {split: report.counts() for split, report in reports.items()},  # distinct, per reason
    }
    with writer.as_default():
        for name in ("top1", "top5", "top1_ema", "top5_ema"):
            if summary[name] is not None:
                tf.summary.scalar(f"eval/{name}", summary[name], step=steps)
        for split, counts in summary["bad_records"].items():
            for reason, count in counts.items():
                tf.summary.scalar(f"bad_records/{split}/{reason}", count, step=steps)
    writer.close()
    storage.write_atomic(storage.join(workdir, RESULTS_FILE), json.dumps(summary, indent=1))
    line = f"{eval_split} ({summary['eval_examples']} images, {eval_size} px, crop fraction " \
           f"{crop_fraction:g}): top-1 {summary['top1']:.4f} top-5 {summary['top5']:.4f}"
    if config.ema:
        line += f"; EMA top-1 {summary['top1_ema']:.4f} top-5 {summary['top5_ema']:.4f}"
    print(line + f"; results in {storage.join(workdir, RESULTS_FILE)}", flush=True)
    return summary
