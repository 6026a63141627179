"""`NFNet`: a functional keras.Model built from a variant row (F0-F7, F0+-F7+, or the small CPU rows)."""
import keras

from keras_nfnet.layers import NFBlock, ScaledActivation, WSConv2D, check_activation, check_numerics
from keras_nfnet.variants import NFNetVariant, VARIANTS, get_variant


@keras.saving.register_keras_serializable(package="keras_nfnet")
class InputCheck(keras.layers.Layer):
    """Passes images through unchanged; raises a clear ValueError when a statically known shape is unusable."""

    def __init__(self, min_size, channels=3, **kwargs):
        super().__init__(**kwargs)
        self.min_size = int(min_size)
        self.channels = int(channels)

    def check_shape(self, shape):
        shape = tuple(shape)
        if len(shape) != 4:
            raise ValueError(f"NFNet takes a batch of images (batch, height, width, 3); got shape {shape}.")
        if shape[-1] is not None and shape[-1] != self.channels:
            raise ValueError(
                f"NFNet takes RGB images with {self.channels} channels (channels-last); got {shape[-1]} channels "
                f"in shape {shape}. Convert grayscale/RGBA images to RGB first."
            )
        small = [n for n in shape[1:3] if n is not None and n < self.min_size]
        if small:
            raise ValueError(
                f"Image size {shape[1:3]} is too small for this network: every side must be at least "
                f"{self.min_size} px (its total stride)."
            )

    def build(self, input_shape):
        self.check_shape(input_shape)

    def call(self, inputs):
        self.check_shape(inputs.shape)  # static shape: catches eager calls and traced calls with known sizes
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_size": self.min_size, "channels": self.channels}


def _dtype_policy(dtype):
    if dtype is None:
        return keras.config.dtype_policy()
    try:
        return keras.dtype_policies.get(dtype)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"Unknown dtype {dtype!r}; use a Keras dtype policy name such as 'float32', 'mixed_bfloat16' or "
            f"'mixed_float16'."
        ) from err


def check_classifier_options(num_classes, include_top, stochastic_depth_rate, dropout_rate, default_dropout_rate,
                             eval_image_size, crop_fraction):
    """Validate the options every image classifier of this package shares (NFNet, ViT); return the dropout rate
    to use (`dropout_rate`, or the variant's `default_dropout_rate` when None)."""
    if eval_image_size is not None and (isinstance(eval_image_size, bool) or not isinstance(eval_image_size, int)
                                        or eval_image_size < 1):
        raise ValueError(f"eval_image_size must be a positive int or None; got {eval_image_size!r}.")
    if crop_fraction is not None and (isinstance(crop_fraction, bool) or not isinstance(crop_fraction, (int, float))
                                      or not 0.0 < crop_fraction <= 1.0):
        raise ValueError(f"crop_fraction must be in (0, 1] or None; got {crop_fraction!r}.")
    if include_top and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int with include_top=True; got {num_classes!r}.")
    if not 0.0 <= stochastic_depth_rate < 1.0:
        raise ValueError(f"stochastic_depth_rate must be in [0, 1); got {stochastic_depth_rate}.")
    drop = default_dropout_rate if dropout_rate is None else dropout_rate
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1) or None; got {dropout_rate}.")
    return drop


def serialize_variant(variant):
    """A variant for get_config: a registered row by name, a custom row as its dict."""
    if isinstance(variant, NFNetVariant):
        return variant.name if VARIANTS.get(variant.name) == variant else variant.to_dict()
    return variant


@keras.saving.register_keras_serializable(package="keras_nfnet")
class NFNet(keras.Model):
    """Normalizer-free ResNet (Brock et al. 2021) as a functional Keras model.

    Args:
        variant: a name in `keras_nfnet.variants.VARIANTS` ("F0".."F7", "F0+".."F7+", "tiny", "S0".."S3") or an
            `NFNetVariant`.
        num_classes: classifier outputs (with include_top).
        activation: scaled activation name (see `keras_nfnet.layers.ACTIVATION_GAMMAS`).
        stochastic_depth_rate: the last block's drop rate; block i of N uses rate * i / N.
        dropout_rate: dropout before the classifier; None uses the variant's.
        include_top: add pooling, dropout and the classifier (outputs float32 logits).
        pooling: without the top, None returns the final feature map, "avg"/"max" a pooled vector.
        input_shape: (height, width, 3); height/width may be None (any resolution).
        dtype: a Keras dtype policy name, e.g. "mixed_bfloat16"; None uses the global policy.
        numerics: "deepmind" (default) or "timm": whose GELU and weight-standardisation arithmetic to reproduce
            (`keras_nfnet.layers.NUMERICS`).
        eval_image_size, crop_fraction: the model's evaluation view (`keras_nfnet.data.preprocess.eval_image`),
            saved with it so that evaluation, export and serving see images the same way; None = not set (the
            variant's test resolution and the papers' size / (size + 32) crop are used).

    Inputs are normalised float RGB images, channels-last.
    """

    def __init__(self, variant="F0", num_classes=1000, activation="gelu", stochastic_depth_rate=0.25,
                 dropout_rate=None, include_top=True, pooling=None, input_shape=(None, None, 3), dtype=None,
                 name=None, numerics="deepmind", eval_image_size=None, crop_fraction=None, **kwargs):
        row = get_variant(variant)
        check_activation(activation)
        check_numerics(numerics)
        if pooling not in (None, "avg", "max"):
            raise ValueError(f"pooling must be None, 'avg' or 'max'; got {pooling!r}.")
        drop = check_classifier_options(num_classes, include_top, stochastic_depth_rate, dropout_rate,
                                        row.dropout_rate, eval_image_size, crop_fraction)
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (height, width, 3); got {input_shape}.")
        policy = _dtype_policy(dtype)
        inputs = keras.Input(shape=input_shape, name="images")
        x, _ = feature_maps(inputs, row, activation, stochastic_depth_rate, policy, numerics)
        if include_top:
            x = keras.layers.GlobalAveragePooling2D(dtype=policy, name="avg_pool")(x)
            if drop > 0:
                x = keras.layers.Dropout(drop, dtype=policy, name="dropout")(x)
            # The classifier runs in float32 so logits are float32 under mixed precision.
            x = keras.layers.Dense(
                num_classes,
                kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
                bias_initializer="zeros",
                dtype="float32",
                name="classifier",
            )(x)
        elif pooling == "avg":
            x = keras.layers.GlobalAveragePooling2D(dtype=policy, name="avg_pool")(x)
        elif pooling == "max":
            x = keras.layers.GlobalMaxPooling2D(dtype=policy, name="max_pool")(x)

        super().__init__(inputs=inputs, outputs=x, name=name or f"nfnet_{row.name.lower().replace('+', '_plus')}",
                         **kwargs)
        self.variant = variant
        self.num_classes = num_classes
        self.activation = activation
        self.stochastic_depth_rate = stochastic_depth_rate
        self.dropout_rate = dropout_rate
        self.include_top = include_top
        self.pooling = pooling
        self.numerics = numerics
        self.image_shape = input_shape
        self.eval_image_size = eval_image_size
        self.crop_fraction = None if crop_fraction is None else float(crop_fraction)
        if dtype is not None:
            self.dtype_policy = policy
        self.variant_row = row

    @property
    def blocks(self):
        """The NF blocks in order."""
        return [layer for layer in self.layers if isinstance(layer, NFBlock)]

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "variant": serialize_variant(self.variant),
            "num_classes": self.num_classes,
            "activation": self.activation,
            "stochastic_depth_rate": self.stochastic_depth_rate,
            "dropout_rate": self.dropout_rate,
            "include_top": self.include_top,
            "pooling": self.pooling,
            "input_shape": list(self.image_shape),
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "numerics": self.numerics,
            "eval_image_size": self.eval_image_size,
            "crop_fraction": self.crop_fraction,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


def feature_maps(inputs, row, activation, stochastic_depth_rate, policy, numerics="deepmind"):
    """Stem, stages and the final 1x1 conv + activation on a Keras tensor `inputs` of images.

    Returns (final feature map, [each stage's output]). NFNet and NFNetBackbone share it, so their layer names
    and weights are the same.
    """
    check = InputCheck(row.min_image_size, dtype=policy, name="input_check")
    check.check_shape(tuple(inputs.shape))
    x = _stem(check(inputs), row, activation, policy, numerics)
    x, stage_outputs = _stages(x, row, activation, stochastic_depth_rate, policy, numerics)
    x = WSConv2D(row.final_conv_multiplier * row.widths[-1], 1, numerics=numerics, dtype=policy,
                 name="final_conv")(x)
    x = ScaledActivation(activation, numerics=numerics, dtype=policy, name="final_act")(x)
    return x, stage_outputs


def _stem(x, row, activation, policy, numerics):
    widths = list(row.stem_widths) + [row.stem_out_width]
    for i, width in enumerate(widths):
        x = WSConv2D(width, 3, strides=2 if i in (0, 3) else 1, numerics=numerics, dtype=policy,
                     name=f"stem_conv{i}")(x)
        if i < 3:  # no activation after the last stem conv: each block pre-activates its input
            x = ScaledActivation(activation, numerics=numerics, dtype=policy, name=f"stem_act{i}")(x)
    return x


def _stages(x, row, activation, stochastic_depth_rate, policy, numerics):
    num_blocks = sum(row.depths)
    index = 0
    expected_std = 1.0
    in_channels = row.stem_out_width
    stage_outputs = []
    for stage, (depth, width, stride) in enumerate(zip(row.depths, row.widths, row.strides)):
        for b in range(depth):
            x = NFBlock(
                in_channels, width,
                mid_channels=row.mid_width(width),
                group_width=row.group_width,
                se_channels=max(1, int(width * row.se_ratio)),
                strides=stride if b == 0 else 1,
                alpha=row.alpha,
                beta=1.0 / expected_std,
                stochastic_depth_rate=stochastic_depth_rate * index / num_blocks,
                activation=activation,
                numerics=numerics,
                dtype=policy,
                name=f"stage{stage}_block{b}",
            )(x)
            in_channels = width
            index += 1
            if b == 0:
                expected_std = 1.0  # a transition block's shortcut re-normalises the residual stream
            expected_std = (expected_std ** 2 + row.alpha ** 2) ** 0.5
        stage_outputs.append(x)
    return x, stage_outputs


def expected_std_schedule(variant):
    """The analytic residual-stream standard deviation after each block at initialisation (skip gains 1)."""
    row = get_variant(variant)
    out = []
    expected_std = 1.0
    for depth in row.depths:
        for b in range(depth):
            if b == 0:
                expected_std = 1.0
            expected_std = (expected_std ** 2 + row.alpha ** 2) ** 0.5
            out.append(expected_std)
    return out
