"""`NFNetImageConverter`: raw RGB images -> the network's input (evaluation view and normalisation), in
`keras.ops` so it runs inside a model on TensorFlow and JAX and inside an exported SavedModel.

The view is (image_size, crop_fraction), as in `keras_nfnet.data.preprocess`: resize the whole image (bicubic,
antialiased, to a square) to round(image_size / crop_fraction) per side, clip to [0, 255], centre-crop image_size
(offset (resized - image_size) // 2), then subtract the ImageNet mean and divide by the standard deviation
(both on the [0, 255] scale). crop_fraction 1.0 is the whole image; None is the papers' size / (size + 32).
"""
import math

import keras
from keras import ops

MEAN_RGB = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
STDDEV_RGB = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)
EVAL_PADDING = 32


def resize_size(image_size, crop_fraction):
    """Side the whole image is resized to before the centre crop."""
    if crop_fraction is None:
        return image_size + EVAL_PADDING
    return max(image_size, int(round(image_size / crop_fraction)))


@keras.saving.register_keras_serializable(package="keras_nfnet")
class NFNetImageConverter(keras.layers.Layer):
    """Batch of RGB images in [0, 255] (any size, any real/int dtype) -> normalised float32 network input.

    Args:
        image_size: output side; None keeps the input size (normalisation only).
        crop_fraction: in (0, 1]; None = the papers' view size / (size + 32).
        mean, std: per-channel statistics on the [0, 255] scale.
    """

    def __init__(self, image_size=None, crop_fraction=None, mean=MEAN_RGB, std=STDDEV_RGB, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                       or image_size <= 0):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        if crop_fraction is not None and (isinstance(crop_fraction, bool)
                                          or not isinstance(crop_fraction, (int, float))
                                          or not math.isfinite(crop_fraction) or not 0.0 < crop_fraction <= 1.0):
            raise ValueError(f"crop_fraction must be in (0, 1] (1 = the whole image) or None, got {crop_fraction!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0); got {mean!r}, {std!r}")
        self.image_size = image_size
        self.crop_fraction = None if crop_fraction is None else float(crop_fraction)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @property
    def resize_size(self):
        return None if self.image_size is None else resize_size(self.image_size, self.crop_fraction)

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.image_size is not None:
            size, side = self.image_size, self.resize_size
            x = ops.image.resize(x, (side, side), interpolation="bicubic", antialias=True)
            x = ops.clip(x, 0.0, 255.0)
            top = (side - size) // 2
            x = x[:, top:top + size, top:top + size, :]
        return (x - ops.convert_to_tensor(self.mean, "float32")) / ops.convert_to_tensor(self.std, "float32")

    def compute_output_shape(self, input_shape):
        if self.image_size is None:
            return tuple(input_shape)
        return (input_shape[0], self.image_size, self.image_size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "crop_fraction": self.crop_fraction,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_preset(cls, preset):
        from keras_nfnet import presets

        return presets.load_image_converter(preset)
