"""The ViT baseline's variant table and its closed-form parameter and multiply-accumulate counts (no Keras needed).

`VIT_VARIANTS` is a ladder matched in compute (forward multiply-accumulates at 32 px) to the NFNet CPU ladder
S0..S3, plus `vit-tiny` for tests. The model itself is `keras_nfnet.vit.ViT`.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class ViTVariant:
    name: str
    patch_size: int
    width: int           # token dimension D
    depth: int           # transformer blocks L
    num_heads: int
    mlp_dim: int         # hidden width M of each block's MLP
    train_image_size: int
    test_image_size: int
    dropout_rate: float = 0.0

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"ViT variant {self.name!r}: width {self.width} is not divisible by num_heads "
                             f"{self.num_heads}.")
        if self.width % 4:
            raise ValueError(f"ViT variant {self.name!r}: width {self.width} must be a multiple of 4 (2-D "
                             "sine-cosine position embedding).")

    @property
    def min_image_size(self):
        return self.patch_size

    def to_dict(self):
        return dataclasses.asdict(self)


VIT_VARIANTS = {
    "vit-tiny": ViTVariant("vit-tiny", 8, 16, 1, 2, 32, 32, 32),
    # Matched to S0..S3 in forward MACs at 32 px (10-class head): ~0.45M, ~1.0M, ~3.3M, ~8.8M vs the NFNets'
    # ~0.49M, ~1.0M, ~2.7M, ~8.3M; train/test resolutions as the NFNet rows they pair with.
    "ViT-0": ViTVariant("ViT-0", 4, 12, 2, 2, 48, 32, 32),
    "ViT-1": ViTVariant("ViT-1", 4, 20, 2, 2, 80, 32, 48),
    "ViT-2": ViTVariant("ViT-2", 4, 32, 3, 4, 128, 48, 64),
    "ViT-3": ViTVariant("ViT-3", 4, 48, 4, 4, 192, 48, 64),
}
VIT_LADDER = ("ViT-0", "ViT-1", "ViT-2", "ViT-3")


def get_vit_variant(variant):
    if isinstance(variant, ViTVariant):
        return variant
    if isinstance(variant, dict):
        return ViTVariant(**variant)
    if isinstance(variant, str) and variant in VIT_VARIANTS:
        return VIT_VARIANTS[variant]
    raise ValueError(f"Unknown ViT variant {variant!r}; known: {', '.join(VIT_VARIANTS)}.")


def _tokens(row, image_size):
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return (h // row.patch_size) * (w // row.patch_size)


def count_params(variant, num_classes=1000, include_top=True):
    """Trainable parameters: patch embedding 3p^2 D + D; per block two LayerNorms (4D), qkv (3D^2 + 3D), output
    projection (D^2 + D), MLP (2DM + M + D); final LayerNorm (2D); classifier (DC + C)."""
    v = get_vit_variant(getattr(variant, "variant", variant))
    d, m = v.width, v.mlp_dim
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (2 * d * m + m + d)
    top = d * num_classes + num_classes if include_top else 0
    return 3 * v.patch_size ** 2 * d + d + v.depth * block + 2 * d + top


def count_macs(variant, image_size, num_classes=1000, include_top=True):
    """Forward multiply-accumulates of one image: every matmul (patch embedding, qkv, the N x N attention scores
    and their weighted sum, output projection, MLP, classifier); LayerNorm, softmax, GELU and pooling are not
    counted (the NFNet count's convention)."""
    v = get_vit_variant(getattr(variant, "variant", variant))
    n, d, m = _tokens(v, image_size), v.width, v.mlp_dim
    block = n * 3 * d * d + 2 * n * n * d + n * d * d + 2 * n * d * m
    return n * 3 * v.patch_size ** 2 * d + v.depth * block + (d * num_classes if include_top else 0)
