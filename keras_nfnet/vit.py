"""A small Vision Transformer baseline for the NFNet-vs-ViT comparison (backend-agnostic, `keras.ops` only).

The "simple ViT" form of the big_vision baselines: non-overlapping patches embedded by a linear map, fixed 2-D
sine-cosine position embeddings (no weights, so the model runs at any resolution that is a multiple of the patch,
which fine-tuning at a higher resolution needs), pre-norm blocks of multi-head self-attention and a GELU MLP,
a final LayerNorm, global average pooling over tokens and a linear classifier.

The variant table (`VIT_VARIANTS`, a ladder matched in compute to the NFNet CPU ladder S0..S3) and the closed-form
parameter and MAC counts are in `keras_nfnet.vit_variants`.
"""
import math

import keras
from keras import ops

from keras_nfnet.models import check_classifier_options
from keras_nfnet.vit_variants import get_vit_variant


def sincos_2d(grid_h, grid_w, width, dtype="float32"):
    """[grid_h * grid_w, width] fixed position embedding: sin/cos of y and x at width/4 frequencies each."""
    quarter = width // 4
    omega = 1.0 / (10000.0 ** (ops.arange(quarter, dtype="float32") / max(quarter - 1, 1)))
    y, x = ops.meshgrid(ops.arange(grid_h, dtype="float32"), ops.arange(grid_w, dtype="float32"), indexing="ij")
    y = ops.reshape(y, (-1, 1)) * omega[None, :]
    x = ops.reshape(x, (-1, 1)) * omega[None, :]
    return ops.cast(ops.concatenate([ops.sin(x), ops.cos(x), ops.sin(y), ops.cos(y)], axis=1), dtype)


@keras.saving.register_keras_serializable(package="keras_nfnet")
class PatchTokens(keras.layers.Layer):
    """Images [b, h, w, 3] -> tokens [b, (h/p)(w/p), D]: linear patch embedding plus sine-cosine positions."""

    def __init__(self, patch_size, width, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.width = int(patch_size), int(width)
        self.embed = keras.layers.Conv2D(width, patch_size, strides=patch_size, padding="valid", dtype=self.dtype_policy,
                                         name="embed")

    def build(self, input_shape):
        self.embed.build(input_shape)

    def call(self, images):
        x = self.embed(images)
        shape = ops.shape(x)
        tokens = ops.reshape(x, (shape[0], shape[1] * shape[2], self.width))
        return tokens + sincos_2d(shape[1], shape[2], self.width, tokens.dtype)[None]

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        n = None if h is None or w is None else (h // self.patch_size) * (w // self.patch_size)
        return (input_shape[0], n, self.width)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "width": self.width}


@keras.saving.register_keras_serializable(package="keras_nfnet")
class TransformerBlock(keras.layers.Layer):
    """x + attn(LN(x)); then x + mlp(LN(x)); each residual branch dropped per example with `drop_path` (training)."""

    def __init__(self, width, num_heads, mlp_dim, drop_path=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.width, self.num_heads, self.mlp_dim = int(width), int(num_heads), int(mlp_dim)
        self.drop_path, self.seed = float(drop_path), seed
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy, name="norm1")
        self.qkv = keras.layers.Dense(3 * width, dtype=policy, name="qkv")
        self.proj = keras.layers.Dense(width, dtype=policy, name="proj")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy, name="norm2")
        self.fc1 = keras.layers.Dense(mlp_dim, dtype=policy, name="fc1")
        self.fc2 = keras.layers.Dense(width, dtype=policy, name="fc2")
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        d = (None, None, self.width)
        self.norm1.build(d)
        self.qkv.build(d)
        self.proj.build(d)
        self.norm2.build(d)
        self.fc1.build(d)
        self.fc2.build((None, None, self.mlp_dim))

    def _attention(self, x):
        shape = ops.shape(x)
        b, n = shape[0], shape[1]
        head = self.width // self.num_heads
        qkv = ops.reshape(self.qkv(x), (b, n, 3, self.num_heads, head))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [b, n, heads, head]
        logits = ops.einsum("bqhd,bkhd->bhqk", q, k) / ops.cast(math.sqrt(head), q.dtype)
        weights = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), v.dtype)
        out = ops.einsum("bhqk,bkhd->bqhd", weights, v)
        return self.proj(ops.reshape(out, (b, n, self.width)))

    def _drop(self, branch, training):
        if not training or self.drop_path == 0.0:
            return branch
        keep = ops.floor(1.0 - self.drop_path + keras.random.uniform(
            (ops.shape(branch)[0], 1, 1), dtype=branch.dtype, seed=self.seed_generator))
        return branch * keep

    def call(self, x, training=False):
        x = x + self._drop(self._attention(self.norm1(x)), training)
        return x + self._drop(self.fc2(keras.activations.gelu(self.fc1(self.norm2(x)), approximate=True)), training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "width": self.width, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                "drop_path": self.drop_path, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_nfnet")
class ViT(keras.Model):
    """Vision Transformer from a `VIT_VARIANTS` row, with the NFNet model's constructor arguments (so the trainers
    build either family the same way).

    Args:
        variant: a name in VIT_VARIANTS or a `ViTVariant`.
        num_classes: classifier outputs (with include_top).
        stochastic_depth_rate: the last block's drop-path rate; block i of L uses rate * (i + 1) / L.
        dropout_rate: dropout before the classifier; None uses the variant's.
        input_shape: (height, width, 3); sides may be None (any multiple of the patch size).
        dtype: a Keras dtype policy name; None uses the global policy.
        eval_image_size, crop_fraction: the model's evaluation view, kept with the model as NFNet keeps it (the
            fine-tuning job sets it; evaluation and export read it).
    """

    def __init__(self, variant="ViT-0", num_classes=1000, stochastic_depth_rate=0.0, dropout_rate=None,
                 include_top=True, input_shape=(None, None, 3), dtype=None, name=None, eval_image_size=None,
                 crop_fraction=None, **kwargs):
        row = get_vit_variant(variant)
        drop = check_classifier_options(num_classes, include_top, stochastic_depth_rate, dropout_rate,
                                        row.dropout_rate, eval_image_size, crop_fraction)
        input_shape = tuple(input_shape)
        for side in input_shape[:2]:
            if side is not None and (side < row.patch_size or side % row.patch_size):
                raise ValueError(f"{row.name} needs image sides that are multiples of its patch size "
                                 f"{row.patch_size}; got input_shape {input_shape}.")
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
        inputs = keras.Input(shape=input_shape, name="images")
        x = PatchTokens(row.patch_size, row.width, dtype=policy, name="patches")(inputs)
        for i in range(row.depth):
            x = TransformerBlock(row.width, row.num_heads, row.mlp_dim,
                                 drop_path=stochastic_depth_rate * (i + 1) / row.depth, dtype=policy,
                                 name=f"block{i}")(x)
        x = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy, name="final_norm")(x)
        if include_top:
            x = keras.layers.GlobalAveragePooling1D(dtype=policy, name="avg_pool")(x)
            if drop > 0:
                x = keras.layers.Dropout(drop, dtype=policy, name="dropout")(x)
            x = keras.layers.Dense(num_classes, kernel_initializer="zeros", dtype="float32", name="classifier")(x)
        super().__init__(inputs=inputs, outputs=x, name=name or row.name.lower().replace("-", "_"), **kwargs)
        self.variant = variant if isinstance(variant, str) else row.to_dict()
        self.num_classes = num_classes
        self.stochastic_depth_rate = stochastic_depth_rate
        self.dropout_rate = dropout_rate
        self.include_top = include_top
        self.image_shape = input_shape
        self.variant_row = row
        self.eval_image_size = eval_image_size
        self.crop_fraction = None if crop_fraction is None else float(crop_fraction)

    def get_config(self):
        return {"variant": self.variant, "num_classes": self.num_classes,
                "stochastic_depth_rate": self.stochastic_depth_rate, "dropout_rate": self.dropout_rate,
                "include_top": self.include_top, "input_shape": self.image_shape, "name": self.name,
                "eval_image_size": self.eval_image_size, "crop_fraction": self.crop_fraction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
