"""Released checkpoints -> Keras weights: read the file safely, recognise its layout (DeepMind or timm), detect the
variant, check every tensor, and build a model or a preset from it.

    weights = load_checkpoint("F0_haiku.npz")                 # or "dm_nfnet_f0.safetensors" / ".pth"
    classifier = weights.classifier()                           # NFNetImageClassifier with every weight set
"""
import dataclasses
import typing

import numpy as np

from keras_nfnet.converters import deepmind, layout, timm
from keras_nfnet.converters.tensor_files import read_tensors
from keras_nfnet.variants import NFNetVariant, get_variant

FORMATS = {deepmind.NAME: deepmind, timm.NAME: timm}
# The numerics each source's weights were used with: DeepMind's release (tanh GELU, 1e-4 floor), timm (erf, 1e-5).
DEFAULT_NUMERICS = {deepmind.NAME: "deepmind", timm.NAME: "timm"}


@dataclasses.dataclass
class ConvertedCheckpoint:
    """Keras-named weights of one checkpoint and what is known about it."""

    variant: NFNetVariant
    num_classes: typing.Optional[int]
    weights: dict            # Keras weight name -> array (Keras layout)
    source_format: str       # "deepmind" | "timm"
    numerics: str            # the numerics its weights were used with
    path: str = ""

    def classifier(self, numerics=None, class_names=None, image_size=None, crop_fraction=None, **kwargs):
        """An NFNetImageClassifier (or, without a head in the file, an NFNetBackbone) holding these weights.

        numerics: default the source's; image_size/crop_fraction: the evaluation view (default the variant's
        test resolution and the papers' crop); kwargs go to NFNetBackbone (e.g. dtype)."""
        from keras_nfnet.backbone import NFNetBackbone
        from keras_nfnet.classifier import NFNetImageClassifier
        from keras_nfnet.image_converter import NFNetImageConverter

        backbone = NFNetBackbone(self.variant, numerics=numerics or self.numerics, **kwargs)
        if self.num_classes is None:
            model = backbone
        else:
            converter = NFNetImageConverter(image_size or self.variant.test_image_size, crop_fraction)
            model = NFNetImageClassifier(backbone, self.num_classes, image_converter=converter,
                                         class_names=class_names)
        layout.assign(model, self.weights)
        return model


def detect_format(names, path=""):
    """"deepmind" or "timm" from the tensor names; ValueError when neither (or both) fit."""
    fits = [name for name, module in FORMATS.items() if module.looks_like(names)]
    if len(fits) != 1:
        sample = ", ".join(sorted(names)[:4])
        raise ValueError(f"{path}: cannot tell the checkpoint's layout from its tensor names ({sample}, ...): "
                         f"expected DeepMind's Haiku module paths (NFNet/~/stem_conv0/w) or timm's state dict "
                         f"names (stem.conv1.weight)" + ("; both match, pass source_format=" if fits else ""))
    return fits[0]


def _parse(tensors, source_format, path):
    """(format name, {source name: Keras name}, {Keras name: Keras-layout shape})."""
    for name, array in tensors.items():
        kind = np.asarray(array).dtype
        if kind.kind not in "biuf":
            raise ValueError(f"{path + ': ' if path else ''}{name} holds {kind.name} values, not numbers")
    source_format = source_format or detect_format(list(tensors), path)
    if source_format not in FORMATS:
        raise ValueError(f"unknown source_format {source_format!r}; use one of {', '.join(FORMATS)}")
    fmt = FORMATS[source_format]
    where = f"{path}: " if path else ""
    try:
        names = fmt.parse(list(tensors))
    except ValueError as error:
        raise ValueError(where + str(error)) from None
    keras_shapes = {}
    for src, dst in names.items():
        try:
            keras_shapes[dst] = np.shape(fmt.to_keras(dst, tensors[src]))
        except ValueError:
            raise ValueError(f"{where}{src} has shape {tuple(np.shape(tensors[src]))}, which is not the layout of "
                             f"a {source_format} {dst.rsplit('/', 1)[-1]}") from None
    return source_format, names, keras_shapes


def infer_variant(tensors, source_format=None, name="custom", path="", **overrides):
    """An NFNetVariant row read from the tensors' shapes, for checkpoints of no known variant (strides assumed
    (1, 2, 2, 2); resolutions and dropout from `overrides`)."""
    _, _, keras_shapes = _parse(tensors, source_format, path)
    return layout.custom_variant(keras_shapes, name=name, **overrides)


def convert_tensors(tensors, variant=None, source_format=None, path=""):
    """ConvertedCheckpoint from {source name: array}; every tensor must be used and every shape must match."""
    source_format, names, keras_shapes = _parse(tensors, source_format, path)
    fmt = FORMATS[source_format]
    where = f"{path}: " if path else ""
    num_classes = keras_shapes["classifier/kernel"][-1] if "classifier/kernel" in keras_shapes else None
    try:
        row = layout.detect_variant(keras_shapes) if variant is None else get_variant(variant)
    except ValueError as error:
        raise ValueError(where + str(error)) from None
    root = deepmind.root_of(list(tensors)) if source_format == deepmind.NAME else None
    expected = {fmt.source_name(n, row, root): fmt.source_shape(n, s)
                for n, s in layout.expected_shapes(row, num_classes).items()}
    try:
        layout.check_shapes({src: tuple(np.shape(a)) for src, a in tensors.items()}, expected)
    except ValueError as error:
        raise ValueError(f"{where}checkpoint does not fit variant {row.name}: {error}") from None
    # Views where possible (no copy until the weights are assigned to a model).
    weights = {names[src]: fmt.to_keras(names[src], np.asarray(a)) for src, a in tensors.items()}
    weights = {n: a if a.dtype == np.float32 else a.astype(np.float32) for n, a in weights.items()}
    return ConvertedCheckpoint(row, num_classes, weights, source_format, DEFAULT_NUMERICS[source_format], path)


def load_checkpoint(path, variant=None, source_format=None):
    """ConvertedCheckpoint of a released checkpoint file (DeepMind `.npz` pickle, timm `.safetensors`/`.pth`)."""
    return convert_tensors(read_tensors(path), variant=variant, source_format=source_format, path=str(path))
