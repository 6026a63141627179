"""The evaluation job: top-1/top-5 and the loss of a trained model over every example of a corpus split.

    python -m keras_nfnet.jobs.evaluate --config.model=/runs/ft --config.corpus=/data/digits --workdir=/runs/eval
    nfnet-evaluate --config.model=/runs/ft/model.keras --config.corpus=/data/digits --config.split=test ...

`model` is anything `keras_nfnet.jobs.sources` loads (a fine-tuning or pretraining workdir, a checkpoint directory,
a .keras file, a preset). The evaluation view is the model's own (NFNet's `eval_image_size` and `crop_fraction`,
as fine-tuning stored them) unless the config sets it. The result (`result.json`, keras_nfnet.jobs.context) holds
top1, top5, loss and the examples counted.
"""
from keras_nfnet import storage
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs import context
from keras_nfnet.jobs import defaults

# Evaluation split names the converters write (image folders' "test", TFDS's "test" / "validation") and the
# pretraining corpora's "holdout", in the order a job looks for them.
EVAL_SPLITS = ("test", "validation", "holdout")
_MODEL_VIEW = "model"


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
                     f"{sorted(info.splits)}): name the split in the config")


def topk_accuracy(model, corpus, split, image_size, batch_size, ks=(1, 5), crop_fraction=_MODEL_VIEW,
                  on_bad_record="raise", bad_record_report=None, strategy=None):
    """{"top1", "top5", "loss", "examples"} over every example of `split` (evaluation preprocessing).

    The evaluation view is (image_size, crop_fraction); crop_fraction defaults to the model's own (NFNet's
    `crop_fraction`; None there, or a model without one, means the papers' size / (size + 32)). A prediction
    counts as correct at k when any of its k best classes is a label of the example (for single-label corpora:
    the label is among the k best). k is capped at the number of classes. Under a `strategy` (the model built in
    its scope) each global batch is split over the replicas and the logits gathered back in order.
    """
    import numpy as np
    import tensorflow as tf

    from keras_nfnet.data import pipeline

    if crop_fraction == _MODEL_VIEW:
        crop_fraction = getattr(model, "crop_fraction", None)
    ds = pipeline.eval_dataset(corpus, split, batch_size, image_size, crop_fraction=crop_fraction,
                               on_bad_record=on_bad_record, bad_record_report=bad_record_report)

    def forward(x, y, w):
        return tf.cast(model(x, training=False), tf.float32), y, w

    if strategy is None:
        batches, predict = ds, tf.function(forward)
    else:
        def predict_replicas(x, y, w):  # each replica gets a slice of the global batch; gathered back in order
            return tuple(strategy.gather(v, axis=0) for v in strategy.run(forward, args=(x, y, w)))

        batches, predict = strategy.experimental_distribute_dataset(ds), tf.function(predict_replicas)
    correct = {k: 0.0 for k in ks}
    loss_sum, count = 0.0, 0.0
    with pipeline.naming_bad_records(corpus, lambda: [(split, None)]):
        for batch in batches:
            logits, labels, weights = (t.numpy() for t in predict(*batch))
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


def validate(config):
    """Raise ValueError naming every bad field of `config`, before any heavy work."""
    from keras_nfnet.data import corpus as corpus_lib
    from keras_nfnet.data import pipeline
    from keras_nfnet.jobs import sources

    problems = config_lib.check_fields(config, defaults.evaluate())
    if not problems:
        if not config.model:
            problems.append("model is not set (" + sources.KINDS + ")")
        elif not storage.exists(config.model):
            problems.append(f"model {config.model} does not exist")
        if not config.corpus or not storage.exists(storage.join(config.corpus, corpus_lib.METADATA_FILE)):
            problems.append(f"corpus must be a corpus directory holding {corpus_lib.METADATA_FILE}; got "
                            f"{config.corpus!r}")
        if config.image_size < 0 or config.batch_size < 1:
            problems.append(f"image_size must be >= 0 (0 = the model's) and batch_size >= 1; got "
                            f"{config.image_size}, {config.batch_size}")
        if config.crop_fraction != 0 and not 0 < config.crop_fraction <= 1:
            problems.append(f"crop_fraction must be in (0, 1] or 0 (the model's); got {config.crop_fraction:g}")
        from keras_nfnet.training.strategy import KINDS

        if config.strategy not in KINDS:
            problems.append(f"unknown strategy {config.strategy!r}; accepted: {', '.join(KINDS)}")
        if config.on_bad_record not in pipeline.BAD_RECORD_POLICIES:
            problems.append(f"on_bad_record must be one of {pipeline.BAD_RECORD_POLICIES}; got "
                            f"{config.on_bad_record!r}")
    if problems:
        raise ValueError("bad evaluation config:\n  - " + "\n  - ".join(problems))


def evaluate(config, workdir):
    """Evaluate `config.model` on a split of `config.corpus`; returns the result dict, also in result.json."""
    from keras_nfnet import architectures
    from keras_nfnet.data import corpus as corpus_lib
    from keras_nfnet.data import pipeline
    from keras_nfnet.data import verify
    from keras_nfnet.jobs import sources

    clock = context.Clock()
    validate(config)
    context.check_workdir(workdir)
    info = corpus_lib.load_metadata(config.corpus)
    split = find_eval_split(info, config.split)
    verify.open_split(info, split).close()
    if config.verify_checksums:
        verify.verify_checksums(info, [split])
    strategy = context.make_strategy(config)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {strategy.num_replicas_in_sync} "
                         f"replicas of the {config.strategy} strategy")
    with strategy.scope():
        model = sources.load_model(config.model)
    image_size = (config.image_size or getattr(model, "eval_image_size", None)
                  or architectures.get_row(model.variant).test_image_size)
    crop_fraction = config.crop_fraction or _MODEL_VIEW
    report = pipeline.BadRecordReport() if config.on_bad_record == "skip" else None
    metrics = topk_accuracy(model, config.corpus, split, image_size, config.batch_size, crop_fraction=crop_fraction,
                            on_bad_record=config.on_bad_record, bad_record_report=report, strategy=strategy)
    metrics.update(split=split, image_size=int(image_size), variant=model.variant,
                   crop_fraction=getattr(model, "crop_fraction", None) if crop_fraction == _MODEL_VIEW
                   else crop_fraction)
    storage.makedirs(workdir)
    _log_tensorboard(workdir, split, metrics, report)
    result = context.result("evaluate", "done", workdir, config, metrics, seconds=clock.seconds(),
                            bad_records={split: report.counts()} if report is not None else {})
    return context.write_result(workdir, result)


def _log_tensorboard(workdir, split, metrics, report):
    """eval/<split>/{top1,top5,loss} (and skipped records) at step 0, beside a training run's curves."""
    import tensorflow as tf

    writer = context.tensorboard_writer(workdir)
    try:
        with writer.as_default():
            for name in ("top1", "top5", "loss"):
                tf.summary.scalar(f"eval/{split}/{name}", metrics[name], step=0)
            for reason, count in (report.counts() if report is not None else {}).items():
                tf.summary.scalar(f"bad_records/{split}/{reason}", count, step=0)
    finally:
        writer.close()


def _main(argv):
    from absl import flags

    del argv
    result = evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    m = result["metrics"]
    print(f"{m['split']} ({m['examples']} images, {m['image_size']} px): top-1 {m['top1']:.4f} top-5 "
          f"{m['top5']:.4f} loss {m['loss']:.4f}; result in {storage.join(result['workdir'], context.RESULT_FILE)}",
          flush=True)
    return 0


def main():
    """The console script `nfnet-evaluate` (and `python -m keras_nfnet.jobs.evaluate`)."""
    from keras_nfnet.jobs import app

    app.define_flags("evaluate", workdir_help="where result.json goes")
    app.run(_main)


if __name__ == "__main__":
    main()
