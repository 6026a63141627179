"""keras-nfnet: normalizer-free ResNets (NFNet F0-F7, F0+-F7+), Adaptive Gradient Clipping and the tools to
repeat "ConvNets Match Vision Transformers at Scale" at your own scale.

Public names are loaded lazily: a submodule's own dependencies (for example the input pipeline's) are only
imported when that part is used. The Keras classes a saved model names (`keras_nfnet>NFNet`, `>WSConv2D`,
`>AGC`, ...) are registered on import, so `import keras_nfnet; keras.saving.load_model("model.keras")` works in a
fresh process. That imports Keras (and its backend); a process where Keras cannot be imported (the TensorFlow-only
model server) skips the registration.

The command-line apps (the jobs, and `trainers/`, `datasets/`, `benchmarks/` of this repository) are quiet by default:
TensorFlow's C++ start-up lines (INFO, and on a machine with a CUDA library but no GPU the "failed call to
cuInit" ERROR of its CUDA platform) are hidden with TF_CPP_MIN_LOG_LEVEL=3 unless the user set that variable;
KERAS_NFNET_VERBOSE=1 brings everything back. Importing the package from other programs changes nothing.
"""
import importlib
import os
import sys

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
    "ViT": "vit",
    "ViTVariant": "vit_variants",
    "VIT_VARIANTS": "vit_variants",
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
    "finetune": "jobs.finetune",
    "replace_head": "jobs.finetune",
    "evaluate": "jobs.evaluate",
    "topk_accuracy": "jobs.evaluate",
    "load_model": "jobs.sources",
    "export_for_serving": "export",
    "ModelServer": "serving",
    "serve": "serving",
    # pretraining
    "pretrain": "jobs.pretrain",
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
    "compare_families": "scaling.families",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


_APP_DIRS = ("trainers", "datasets", "benchmarks")


def _running_an_app():
    """Whether the main program is one of the command-line apps: a job (`python -m keras_nfnet.jobs.<name>` or its
    console script `nfnet-<name>`), or an app of this repository's trainers/, datasets/ or benchmarks/."""
    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("keras_nfnet.jobs."):
        return True
    if sys.argv and os.path.basename(sys.argv[0]).startswith("nfnet-"):
        return True
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    app_dir = os.path.dirname(main)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.basename(app_dir) in _APP_DIRS and os.path.dirname(app_dir) == root and main.endswith(".py")


def _quiet_native_logs_of_apps():
    # Must run before TensorFlow is imported: its C++ logging reads the variable once.
    if os.environ.get("KERAS_NFNET_VERBOSE") or "tensorflow" in sys.modules or not _running_an_app():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# The modules whose classes are @keras.saving.register_keras_serializable(package="keras_nfnet").
_SERIALIZABLE_MODULES = ("layers", "models", "vit", "losses", "agc", "optimizers", "backbone", "classifier",
                         "image_converter")


def _register_keras_classes():
    try:
        import keras  # noqa: F401
    except ImportError:
        return
    for module in _SERIALIZABLE_MODULES:
        importlib.import_module(f"{__name__}.{module}")


_quiet_native_logs_of_apps()
_register_keras_classes()
