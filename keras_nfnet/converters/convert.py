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

    def classifier(self, numerics=None, class_names=None, crop_fraction=None, **kwargs):
        """An NFNetImageClassifier (or, without a head in the file, an NFNetBackbone) holding these weights."""
        from keras_nfnet.backbone import NFNetBackbone
        from keras_nfnet.classifier import NFNetImageClassifier
        from keras_nfnet.image_converter import NFNetImageConverter

        backbone = NFNetBackbone(self.variant, numerics=numerics or self.numerics, **kwargs)
        if self.num_classes is None:
            model = backbone
        else:
            converter = NFNetImageConverter(image_size=self.variant.test_image_size,
                                            **({} if crop_fraction is None else {"crop_fraction": crop_fraction}))
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


def convert_tensors(tensors, variant=None, source_format=None, path=""):
    """ConvertedCheckpoint from {source name: array}; every tensor must be used and every shape must match."""
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
    num_classes = keras_shapes["classifier/kernel"][-1] if "classifier/kernel" in keras_shapes else None
    try:
        row = layout.detect_variant(keras_shapes) if variant is None else get_variant(variant)
    except ValueError as error:
        raise ValueError(where + str(error)) from None
    root = deepmind._root(list(tensors)) if source_format == deepmind.NAME else None
    expected = {fmt.source_name(n, row, root): fmt.source_shape(n, s)
                for n, s in layout.expected_shapes(row, num_classes).items()}
    try:
        layout.check_shapes({src: tuple(np.shape(a)) for src, a in tensors.items()}, expected)
    except ValueError as error:
        raise ValueError(f"{where}checkpoint does not fit variant {row.name}: {error}") from None
    weights = {names[src]: np.asarray(fmt.to_keras(names[src], np.asarray(a)), np.float32)
               for src, a in tensors.items()}
    return ConvertedCheckpoint(row, num_classes, weights, source_format, DEFAULT_NUMERICS[source_format], path)


def load_checkpoint(path, variant=None, source_format=None):
    """ConvertedCheckpoint of a released checkpoint file (DeepMind `.npz` pickle, timm `.safetensors`/`.pth`)."""
    return convert_tensors(read_tensors(path), variant=variant, source_format=source_format, path=str(path))
