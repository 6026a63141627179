"""`NFNetImageClassifier`: an image-classification head on an `NFNetBackbone`, keras-hub style.

    classifier = NFNetImageClassifier(backbone=backbone, num_classes=10)   # new head on pretrained features
    logits = classifier(normalised_images)
    served = classifier.with_preprocessing()                             # raw [0, 255] images of any size in

The model takes normalised images (what the input pipeline produces). `image_converter` holds the evaluation
view (resize, crop fraction, normalisation) for raw images; `class_names` names the outputs. Both are part of the
config, so they travel with `.keras` files and presets.
"""
import keras

from keras_nfnet.backbone import NFNetBackbone
from keras_nfnet.image_converter import NFNetImageConverter


@keras.saving.register_keras_serializable(package="keras_nfnet")
class NFNetImageClassifier(keras.Model):
    """backbone -> pooling -> dropout -> Dense(num_classes, named "classifier").

    Args:
        backbone: an NFNetBackbone (its weights are shared, not copied).
        num_classes: outputs.
        pooling: "avg" or "max".
        activation: None for logits, or a Keras activation name ("softmax") applied by the head.
        dropout: rate before the head.
        head_dtype: dtype policy of the head; "float32" keeps logits float32 under mixed precision.
        image_converter: NFNetImageConverter for raw images (default: the variant's test size, papers' view).
        class_names: one name per output, or None.
    """

    def __init__(self, backbone, num_classes, pooling="avg", activation=None, dropout=0.0, head_dtype="float32",
                 image_converter=None, class_names=None, **kwargs):
        if not isinstance(backbone, NFNetBackbone):
            raise ValueError(f"backbone must be an NFNetBackbone; got {type(backbone).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max'; got {pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if len(class_names) != num_classes:
                raise ValueError(f"got {len(class_names)} class names for num_classes={num_classes}")
        if image_converter is None:
            image_converter = NFNetImageConverter(backbone.variant_row.test_image_size)
        head_policy = backbone.dtype_policy if head_dtype is None else head_dtype
        pool_cls = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        pooler = pool_cls(dtype=head_policy, name="pooler")
        output_dropout = keras.layers.Dropout(dropout, dtype=head_policy, name="output_dropout")
        output_dense = keras.layers.Dense(num_classes, activation=activation,
                                          kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
                                          dtype=head_policy, name="classifier")
        inputs = backbone.input
        outputs = output_dense(output_dropout(pooler(backbone(inputs))))
        kwargs.setdefault("name", f"nfnet_classifier_{backbone.variant_row.name.lower()}")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.pooling = pooling
        self.activation = activation
        self.dropout = dropout
        self.head_dtype = head_dtype
        self.image_converter = image_converter
        self.class_names = class_names

    @property
    def crop_fraction(self):
        """The evaluation view's crop fraction (read by export)."""
        return self.image_converter.crop_fraction

    @property
    def numerics(self):
        return self.backbone.numerics

    def with_preprocessing(self):
        """keras.Model: raw RGB images in [0, 255] (any size) -> converter -> this classifier."""
        images = keras.Input(shape=(None, None, 3), name="raw_images")
        return keras.Model(images, self(self.image_converter(images)), name=f"{self.name}_end_to_end")

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "activation": self.activation,
            "dropout": self.dropout,
            "head_dtype": self.head_dtype,
            "image_converter": keras.saving.serialize_keras_object(self.image_converter),
            "class_names": self.class_names,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "image_converter"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, num_classes=None, **kwargs):
        """The classifier of a preset directory; with a different `num_classes`, the preset's backbone under a
        new head (class names dropped)."""
        from keras_nfnet import presets

        return presets.load_classifier(preset, num_classes=num_classes, **kwargs)

    def save_to_preset(self, preset_dir):
        from keras_nfnet import presets

        presets.save_preset(self, preset_dir)


Classifier = NFNetImageClassifier
