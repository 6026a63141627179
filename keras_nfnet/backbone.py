"""`NFNetBackbone`: the NFNet feature extractor (stem, stages, final 1x1 conv + activation), keras-hub style.

    backbone = NFNetBackbone("F0")                        # images -> final feature map (stride 32)
    features = backbone.pyramid_outputs                   # {"P2": stage 0 (stride 4), ..., "P5": stage 3}
    extractor = backbone.feature_pyramid()                # keras.Model: images -> {"P2": ..., "P5": ...}

Layer and weight names equal `NFNet`'s, so weights move between the two by name.
"""
import math

import keras

from keras_nfnet.layers import check_activation, check_numerics
from keras_nfnet.models import _dtype_policy, feature_maps, serialize_variant
from keras_nfnet.variants import get_variant


@keras.saving.register_keras_serializable(package="keras_nfnet")
class NFNetBackbone(keras.Model):
    """NFNet without pooling or classifier; outputs the final feature map (channels = 2 x last stage width).

    Args:
        variant: a name in VARIANTS or an NFNetVariant row.
        activation: scaled activation name.
        stochastic_depth_rate: the last block's drop rate (training only); 0 for inference presets.
        numerics: "deepmind" (default) or "timm" (see `keras_nfnet.layers.NUMERICS`).
        image_shape: (height, width, 3); None sides accept any resolution.
        dtype: a Keras dtype policy, e.g. "mixed_bfloat16".
    """

    def __init__(self, variant="F0", activation="gelu", stochastic_depth_rate=0.0, numerics="deepmind",
                 image_shape=(None, None, 3), dtype=None, name=None, **kwargs):
        row = get_variant(variant)
        check_activation(activation)
        check_numerics(numerics)
        if not 0.0 <= stochastic_depth_rate < 1.0:
            raise ValueError(f"stochastic_depth_rate must be in [0, 1); got {stochastic_depth_rate}.")
        image_shape = tuple(image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (height, width, 3); got {image_shape}.")
        policy = _dtype_policy(dtype)
        inputs = keras.Input(shape=image_shape, name="images")
        x, stage_outputs = feature_maps(inputs, row, activation, stochastic_depth_rate, policy, numerics)
        super().__init__(inputs=inputs, outputs=x, name=name or f"nfnet_backbone_{row.name.lower()}", **kwargs)
        stride, pyramid = 4, {}
        for s, out in zip(row.strides, stage_outputs):
            stride *= s
            pyramid[f"P{int(math.log2(stride))}"] = out
        self.pyramid_outputs = pyramid
        self.variant = variant
        self.variant_row = row
        self.activation = activation
        self.stochastic_depth_rate = stochastic_depth_rate
        self.numerics = numerics
        self.image_shape = image_shape
        if dtype is not None:
            self.dtype_policy = policy

    def feature_pyramid(self):
        """A keras.Model from images to {"P<log2 stride>": each stage's output feature map}."""
        # a plain dict: the attribute is a tracked container, which JAX cannot return from a traced function
        return keras.Model(self.input, dict(self.pyramid_outputs), name=f"{self.name}_pyramid")

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "variant": serialize_variant(self.variant),
            "activation": self.activation,
            "stochastic_depth_rate": self.stochastic_depth_rate,
            "numerics": self.numerics,
            "image_shape": list(self.image_shape),
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """The backbone of a preset directory (`keras_nfnet.presets`), weights loaded."""
        from keras_nfnet import presets

        return presets.load_backbone(preset, **kwargs)

    def save_to_preset(self, preset_dir):
        from keras_nfnet import presets

        presets.save_preset(self, preset_dir)
