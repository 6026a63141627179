"""The NFNet variant table: one row of data per model.

F0-F7 and F0+-F7+ follow the NFNet paper and the DeepMind release (NFNET_SPEC.md section 1). The small rows are
for CPU work: `tiny` (a few thousand parameters, for tests) and a LADDER S0 < S1 < S2 < S3 (about 20k .. 1M
parameters) for scaling-law studies at 32-64 px. Small rows shrink the stem, the group width (which is also the
multiple the bottleneck width is rounded down to) and the widths; everything else about the architecture is the
same code path.
"""
import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class NFNetVariant:
    """One NFNet configuration.

    depths / widths / strides: per stage. group_width: channels per group of the 3x3 convs, and the multiple the
    bottleneck width (bottleneck_ratio * stage width) is rounded down to. stem_widths: the first three stem convs
    (the fourth gives widths[0] // 2). final_conv_multiplier: the head's 1x1 conv has this times the last width.
    """

    name: str
    depths: Tuple[int, ...]
    widths: Tuple[int, ...]
    train_image_size: int
    test_image_size: int
    dropout_rate: float
    randaugment_layers: int = 4
    randaugment_magnitude: int = 5
    strides: Tuple[int, ...] = (1, 2, 2, 2)
    group_width: int = 128
    bottleneck_ratio: float = 0.5
    se_ratio: float = 0.5
    alpha: float = 0.2
    stem_widths: Tuple[int, ...] = (16, 32, 64)
    final_conv_multiplier: int = 2

    def __post_init__(self):
        n = len(self.depths)
        if n == 0 or len(self.widths) != n or len(self.strides) != n:
            raise ValueError(
                f"Variant {self.name!r}: depths, widths and strides need one entry per stage; got "
                f"{len(self.depths)}, {len(self.widths)}, {len(self.strides)}."
            )
        if len(self.stem_widths) != 3:
            raise ValueError(f"Variant {self.name!r}: stem_widths needs 3 entries; got {self.stem_widths}.")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"Variant {self.name!r}: every stage depth must be >= 1; got {self.depths}.")
        for w in self.widths:
            if self.mid_width(w) < self.group_width:
                raise ValueError(
                    f"Variant {self.name!r}: width {w} x bottleneck_ratio {self.bottleneck_ratio} is below the "
                    f"group width {self.group_width}; lower group_width or widen the stage."
                )
        if self.widths[0] // 2 < 1:
            raise ValueError(f"Variant {self.name!r}: widths[0] must be >= 2; got {self.widths[0]}.")

    def mid_width(self, width):
        """Bottleneck width of a block with `width` output channels, rounded down to a multiple of group_width."""
        return (int(width * self.bottleneck_ratio) // self.group_width) * self.group_width

    @property
    def stem_out_width(self):
        return self.widths[0] // 2

    @property
    def total_stride(self):
        """Overall downsampling factor: 4 in the stem times the stage strides."""
        out = 4
        for s in self.strides:
            out *= s
        return out

    @property
    def min_image_size(self):
        """Smallest input side for which every stride-2 step still has at least two pixels to downsample."""
        return self.total_stride

    def to_dict(self):
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, config):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"Unknown NFNetVariant fields {unknown}; known fields: {sorted(known)}.")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()})


_F_WIDTHS = (256, 512, 1536, 1536)
_F_PLUS_WIDTHS = (384, 768, 2048, 2048)
# N -> (train px, test px, dropout, RandAugment magnitude), F0..F7
_F_ROWS = {
    0: (192, 256, 0.2, 5),
    1: (224, 320, 0.3, 10),
    2: (256, 352, 0.4, 10),
    3: (320, 416, 0.4, 15),
    4: (384, 512, 0.5, 15),
    5: (416, 544, 0.5, 15),
    6: (448, 576, 0.5, 15),
    7: (480, 608, 0.5, 15),
}


def _f_variants():
    out = {}
    for n, (train_px, test_px, drop, magnitude) in _F_ROWS.items():
        depths = tuple(d * (n + 1) for d in (1, 2, 6, 3))
        for suffix, widths in (("", _F_WIDTHS), ("+", _F_PLUS_WIDTHS)):
            name = f"F{n}{suffix}"
            out[name] = NFNetVariant(name, depths, widths, train_px, test_px, drop, 4, magnitude)
    return out


VARIANTS = _f_variants()
VARIANTS.update({
    # ~6.5k parameters with a 10-class head: a whole test file runs in seconds at 32 px.
    "tiny": NFNetVariant("tiny", (1, 1, 1, 1), (8, 16, 16, 16), 32, 32, 0.0, 2, 5,
                         group_width=4, stem_widths=(4, 4, 8)),
    # The CPU scaling-law ladder for 32-64 px; parameters with a 10-class head: ~22k, ~72k, ~367k, ~1.1M.
    "S0": NFNetVariant("S0", (1, 1, 1, 1), (16, 32, 32, 32), 32, 32, 0.0, 2, 5,
                       group_width=8, stem_widths=(4, 8, 8)),
    "S1": NFNetVariant("S1", (1, 1, 2, 1), (24, 48, 64, 64), 32, 48, 0.1, 2, 5,
                       group_width=8, stem_widths=(8, 8, 16)),
    "S2": NFNetVariant("S2", (1, 2, 3, 2), (32, 64, 128, 128), 48, 64, 0.1, 2, 10,
                       group_width=16, stem_widths=(8, 16, 16)),
    "S3": NFNetVariant("S3", (1, 2, 4, 2), (64, 128, 192, 192), 48, 64, 0.2, 2, 10,
                       group_width=32, stem_widths=(16, 16, 32)),
})

LADDER = ("S0", "S1", "S2", "S3")


def get_variant(variant):
    """The `NFNetVariant` for a name in VARIANTS (an `NFNetVariant` or its dict passes through)."""
    if isinstance(variant, NFNetVariant):
        return variant
    if isinstance(variant, dict):
        return NFNetVariant.from_dict(variant)
    if isinstance(variant, str) and variant in VARIANTS:
        return VARIANTS[variant]
    raise ValueError(f"Unknown NFNet variant {variant!r}; known variants: {', '.join(VARIANTS)}.")
