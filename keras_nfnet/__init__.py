"""keras-nfnet: normalizer-free ResNets (NFNet F0-F7, F0+-F7+), Adaptive Gradient Clipping and the tools to
repeat "ConvNets Match Vision Transformers at Scale" at your own scale.

Public names are loaded lazily so that `import keras_nfnet` stays cheap and a submodule's dependencies (for
example TensorFlow for the input pipeline) are only imported when that part is used.
"""
import importlib

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    # layers and models
    "WSConv2D": "layers",
    "ScaledActivation": "layers",
    "SqueezeExcite": "layers",
    "StochasticDepth": "layers",
    "NFBlock": "layers",
    "NFNetVariant": "variants",
    "VARIANTS": "variants",
    "LADDER": "variants",
    "get_variant": "variants",
    "NFNet": "models",
    "NFNetBackbone": "backbone",
    "NFNetImageClassifier": "classifier",
    "Classifier": "classifier",
    "NFNetImageConverter": "image_converter",
    "from_preset": "presets",
    "save_preset": "presets",
    "load_checkpoint": "converters",
    "count_macs": "flops",
    "count_params": "flops",
    "signal_propagation": "signal_prop",
    # optimisation recipe
    "AGC": "agc",
    "unit_axes_for_model": "agc",
    "CoupledDecaySGD": "optimizers",
    "nfnet_optimizer": "optimizers",
    "warmup_cosine": "schedules",
    "peak_learning_rate": "schedules",
    "EMAWarmup": "ema",
    "ema_weights": "ema",
    "SoftmaxCrossEntropy": "losses",
    "SigmoidCrossEntropy": "losses",
    "recipe_loss": "losses",
    # corpus and input pipeline
    "CorpusWriter": "data.corpus",
    "CorpusInfo": "data.corpus",
    "load_metadata": "data.corpus",
    "train_dataset": "data.pipeline",
    "eval_dataset": "data.pipeline",
    "eval_steps": "data.pipeline",
    "BadRecordReport": "data.pipeline",
    "CorruptRecordError": "data.records",
    "preprocess_for_eval": "data.preprocess",
    "normalize_image": "data.preprocess",
    "make_synthetic_corpus": "data.synthetic",
    "convert_image_folder": "data.convert",
    "convert_tfds": "data.convert",
    # fine-tuning, export and serving
    "enable_sam": "sam",
    "FinetuneConfig": "finetune",
    "finetune": "finetune",
    "load_pretrained": "finetune",
    "replace_head": "finetune",
    "topk_accuracy": "finetune",
    "export_for_serving": "export",
    "ModelServer": "serving",
    "serve": "serving",
    # pretraining
    "pretrain": "training.pretrain",
    "PretrainConfig": "training.config",
    "load_config": "training.config",
    "make_strategy": "training.strategy",
    "CheckpointManager": "training.checkpoint",
    "ComputeClock": "training.compute",
    # scaling-law studies
    "RunResult": "scaling.results",
    "ResultsStore": "scaling.results",
    "fit_power_law": "scaling.fit",
    "fit_loss_frontier": "scaling.fit",
    "fit_allocation": "scaling.fit",
    "fit_best_lr": "scaling.fit",
    "load_sweep": "scaling.sweep",
    "run_sweep": "scaling.sweep",
    "analyze": "scaling.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
