"""Analytic parameter and multiply-accumulate (MAC) counts of an NFNet, from its variant row alone.

Counted like the DeepMind release's `count_flops` (which reproduces every published F0-F6 "FLOPs" figure): every
convolution, the squeeze-excite dense layers and the classifier; activations, pooling and additions are not
counted. Nothing is built, so F7+ can be counted in microseconds.
"""
from keras_nfnet.variants import get_variant


def _ceil_div(n, s):
    return -(-n // s)


def _layers(variant, image_size, num_classes, include_top=True):
    """Yield (kind, params, macs) for every weighted layer. kind is 'conv', 'dense' or 'scalar'."""
    v = get_variant(variant)
    h, w = image_size

    def conv(cin, cout, k, stride, groups, h, w):
        oh, ow = _ceil_div(h, stride), _ceil_div(w, stride)
        weights = k * k * (cin // groups) * cout
        return ("conv", weights + 2 * cout, weights * oh * ow), oh, ow  # + bias + gain

    ch = 3
    stem = list(v.stem_widths) + [v.stem_out_width]
    for i, cout in enumerate(stem):
        stride = 2 if i in (0, 3) else 1
        layer, h, w = conv(ch, cout, 3, stride, 1, h, w)
        yield layer
        ch = cout
    for depth, width, stage_stride in zip(v.depths, v.widths, v.strides):
        for b in range(depth):
            stride = stage_stride if b == 0 else 1
            mid = v.mid_width(width)
            groups = mid // v.group_width
            se = max(1, int(width * v.se_ratio))
            layer, _, _ = conv(ch, mid, 1, 1, 1, h, w)
            yield layer
            layer, oh, ow = conv(mid, mid, 3, stride, groups, h, w)
            yield layer
            yield conv(mid, mid, 3, 1, groups, oh, ow)[0]
            yield conv(mid, width, 1, 1, 1, oh, ow)[0]
            if stride > 1 or ch != width:
                yield conv(ch, width, 1, 1, 1, oh, ow)[0]  # shortcut runs on the pooled (output-size) map
            yield ("dense", width * se + se, width * se)
            yield ("dense", se * width + width, se * width)
            yield ("scalar", 1, 0)  # skip_gain
            h, w, ch = oh, ow, width
    final = v.final_conv_multiplier * ch
    yield conv(ch, final, 1, 1, 1, h, w)[0]
    if include_top:
        yield ("dense", final * num_classes + num_classes, final * num_classes)


def _image_size(image_size):
    if isinstance(image_size, int):
        return (image_size, image_size)
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(isinstance(n, int) for n in image_size):
        return tuple(image_size)
    raise ValueError(f"image_size must be an int or a (height, width) pair of ints; got {image_size!r}.")


def _resolve(variant_or_model, num_classes, include_top):
    """A model passes its own variant, class count and include_top."""
    variant = getattr(variant_or_model, "variant", variant_or_model)
    if hasattr(variant_or_model, "num_classes"):
        num_classes = variant_or_model.num_classes
        include_top = variant_or_model.include_top
    return get_variant(variant), num_classes, include_top


def count_params(variant, num_classes=1000, include_top=True):
    """Number of trainable parameters of `NFNet(variant, num_classes)`, without building it."""
    v, num_classes, include_top = _resolve(variant, num_classes, include_top)
    return sum(p for _, p, _ in _layers(v, (32, 32), num_classes, include_top))


def count_macs(variant_or_model, image_size, num_classes=1000, include_top=True):
    """Multiply-accumulates of one forward pass of one image of side `image_size` (int or (h, w))."""
    v, num_classes, include_top = _resolve(variant_or_model, num_classes, include_top)
    return sum(m for _, _, m in _layers(v, _image_size(image_size), num_classes, include_top))
