"""Preset directories: a model's config, weights and preprocessing in keras-hub's layout.

    <preset>/config.json            the backbone (keras.saving.serialize_keras_object)
    <preset>/model.weights.h5       the backbone's weights
    <preset>/task.json              the classifier (head settings, image converter, class names), when there is one
    <preset>/task.weights.h5        the head's weights only
    <preset>/image_converter.json   the evaluation view and normalisation
    <preset>/metadata.json          versions, parameter count, date, tasks, and where the weights came from

    save_preset(classifier, "presets/f0")
    model = from_preset("presets/f0")            # the classifier (the backbone, for a backbone-only preset)
    new_task = NFNetImageClassifier.from_preset("presets/f0", num_classes=10)   # the backbone under a new head

A preset is written under a temporary name and renamed into place, so a reader never sees half of one.
"""
import datetime
import json
import os
import shutil
import tempfile

import keras

from keras_nfnet import compat, storage

CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
IMAGE_CONVERTER_CONFIG_FILE = "image_converter.json"
METADATA_FILE = "metadata.json"


def _serialize(obj):
    config = keras.saving.serialize_keras_object(obj)
    for key in ("build_config", "compile_config"):
        config.pop(key, None)
    return config


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def is_preset(path):
    """True for a directory (local or in a bucket) holding a preset's config.json and model.weights.h5."""
    return storage.exists(storage.join(path, CONFIG_FILE)) and storage.exists(storage.join(path, MODEL_WEIGHTS_FILE))


def _local(preset):
    """A local directory with the preset's files: the preset itself, or a fetched copy of one in a bucket."""
    if not storage.is_remote(preset):
        return preset
    if not storage.isdir(preset):
        raise FileNotFoundError(f"preset directory {preset} does not exist")
    return storage.fetch_dir(preset)


def _upload(local_dir, preset_dir):
    """Copy a saved preset into a bucket with config.json last: `is_preset` sees it only once it is complete."""
    names = sorted(os.listdir(local_dir), key=lambda name: name == CONFIG_FILE)
    for name in names:
        with open(os.path.join(local_dir, name), "rb") as f:
            storage.write_bytes(storage.join(preset_dir, name), f.read())


def save_preset(model, preset_dir, source=None):
    """Write an NFNetImageClassifier or NFNetBackbone as a preset directory (which must not exist yet).

    `source` (a dict, e.g. the converted file and its format) is recorded in metadata.json."""
    from keras_nfnet import __version__
    from keras_nfnet.backbone import NFNetBackbone
    from keras_nfnet.classifier import NFNetImageClassifier

    if isinstance(model, NFNetImageClassifier):
        backbone, task = model.backbone, model
    elif isinstance(model, NFNetBackbone):
        backbone, task = model, None
    else:
        raise ValueError(f"save_preset takes an NFNetImageClassifier or NFNetBackbone; got {type(model).__name__}")
    if storage.is_remote(preset_dir):
        if storage.exists(preset_dir):
            raise ValueError(f"{preset_dir} already exists; choose a new preset directory")
        with tempfile.TemporaryDirectory(prefix="preset-") as tmp:
            save_preset(model, os.path.join(tmp, "preset"), source=source)
            _upload(os.path.join(tmp, "preset"), preset_dir)
        return
    preset_dir = os.path.normpath(preset_dir)
    if os.path.exists(preset_dir):
        raise ValueError(f"{preset_dir} already exists; choose a new preset directory")
    parent = os.path.dirname(os.path.abspath(preset_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".preset-", dir=parent)
    try:
        _write_json(os.path.join(tmp, CONFIG_FILE), _serialize(backbone))
        backbone.save_weights(os.path.join(tmp, MODEL_WEIGHTS_FILE))
        if task is not None:
            _write_json(os.path.join(tmp, TASK_CONFIG_FILE), _serialize(task))
            _write_json(os.path.join(tmp, IMAGE_CONVERTER_CONFIG_FILE), _serialize(task.image_converter))
            keras.saving.save_weights(task, os.path.join(tmp, TASK_WEIGHTS_FILE),
                                      objects_to_skip=compat.flatten_layers(backbone))
        _write_json(os.path.join(tmp, METADATA_FILE), {
            "keras_version": keras.__version__,
            "keras_nfnet_version": __version__,
            "parameter_count": int(model.count_params()),
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
            "tasks": ["NFNetImageClassifier"] if task is not None else [],
            "variant": backbone.variant_row.name,
            "numerics": backbone.numerics,
            "source": source or {},
        })
        os.replace(tmp, preset_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check(preset):
    if not os.path.isdir(preset):
        raise FileNotFoundError(f"preset directory {preset} does not exist")
    if not is_preset(preset):
        raise ValueError(f"{preset} is not a preset directory (expected {CONFIG_FILE} and {MODEL_WEIGHTS_FILE})")


def _read_json(preset, name):
    with open(os.path.join(preset, name)) as f:
        return json.load(f)


def _deserialize(config):
    import keras_nfnet.classifier  # noqa: F401  (registers the classes the config names)

    return keras.saving.deserialize_keras_object(config)


def load_backbone(preset, dtype=None):
    """The preset's NFNetBackbone with its weights."""
    preset = _local(preset)
    _check(preset)
    config = _read_json(preset, CONFIG_FILE)
    if dtype is not None:
        config["config"]["dtype"] = dtype
    backbone = _deserialize(config)
    backbone.load_weights(os.path.join(preset, MODEL_WEIGHTS_FILE))
    return backbone


def load_image_converter(preset):
    preset = _local(preset)
    _check(preset)
    if not os.path.isfile(os.path.join(preset, IMAGE_CONVERTER_CONFIG_FILE)):
        raise ValueError(f"{preset} has no {IMAGE_CONVERTER_CONFIG_FILE} (a backbone-only preset)")
    return _deserialize(_read_json(preset, IMAGE_CONVERTER_CONFIG_FILE))


def load_classifier(preset, num_classes=None, dtype=None, **head_kwargs):
    """The preset's NFNetImageClassifier with its weights; with another `num_classes` (or a backbone-only
    preset), the preset's backbone under a new head of `num_classes`."""
    from keras_nfnet.classifier import NFNetImageClassifier

    preset = _local(preset)
    _check(preset)
    backbone = load_backbone(preset, dtype=dtype)
    has_task = os.path.isfile(os.path.join(preset, TASK_CONFIG_FILE))
    task_config = _read_json(preset, TASK_CONFIG_FILE)["config"] if has_task else None
    if task_config is None or (num_classes is not None and num_classes != task_config["num_classes"]):
        if num_classes is None:
            raise ValueError(f"{preset} holds a backbone only: pass num_classes for a new head")
        converter = load_image_converter(preset) if has_task else None
        return NFNetImageClassifier(backbone, num_classes, image_converter=converter, **head_kwargs)
    config = {k: v for k, v in task_config.items() if k not in ("backbone", "name", "trainable")}
    config["image_converter"] = _deserialize(config["image_converter"])
    config.update(head_kwargs)
    classifier = NFNetImageClassifier(backbone, name=task_config.get("name"), **config)
    keras.saving.load_weights(classifier, os.path.join(preset, TASK_WEIGHTS_FILE),
                              objects_to_skip=compat.flatten_layers(backbone))
    return classifier


def from_preset(preset):
    """The preset's classifier, or its backbone when it has no task."""
    preset = _local(preset)
    _check(preset)
    if os.path.isfile(os.path.join(preset, TASK_CONFIG_FILE)):
        return load_classifier(preset)
    return load_backbone(preset)


def load_nfnet(preset):
    """The preset as a plain `NFNet` (same layer names and weights), for code written against NFNet."""
    from keras_nfnet.converters import layout
    from keras_nfnet.models import NFNet

    model = from_preset(preset)
    backbone = getattr(model, "backbone", model)
    nfnet = NFNet(backbone.variant, num_classes=getattr(model, "num_classes", 1), activation=backbone.activation,
                  stochastic_depth_rate=0.0, dropout_rate=0.0, include_top=hasattr(model, "num_classes"),
                  numerics=backbone.numerics)
    layout.assign(nfnet, {name: variable.numpy() for name, variable in layout.model_variables(model).items()})
    return nfnet
