"""The Keras side of weight conversion: which weights an NFNet variant has (computed from its row, nothing built),
reading a variant back from a set of weight shapes, and filling a model's variables with full checks.

Weights are named as in a standalone `NFNet`/`NFNetBackbone` ("stage1_block0/conv1/kernel", "classifier/bias").
"""
import re

import numpy as np

from keras_nfnet.variants import VARIANTS, NFNetVariant, get_variant


def _conv(prefix, kh, cin, cout):
    return {f"{prefix}/kernel": (kh, kh, cin, cout), f"{prefix}/gain": (cout,), f"{prefix}/bias": (cout,)}


def expected_shapes(variant, num_classes=None):
    """{weight name: shape} of an NFNet of `variant`, in model order; with a `num_classes` head when not None."""
    row = get_variant(variant)
    out = {}
    cin = 3
    for i, width in enumerate(list(row.stem_widths) + [row.stem_out_width]):
        out.update(_conv(f"stem_conv{i}", 3, cin, width))
        cin = width
    for stage, (depth, width) in enumerate(zip(row.depths, row.widths)):
        mid = row.mid_width(width)
        for b in range(depth):
            p = f"stage{stage}_block{b}"
            out[f"{p}/skip_gain"] = ()
            out.update(_conv(f"{p}/conv0", 1, cin, mid))
            out.update(_conv(f"{p}/conv1", 3, row.group_width, mid))
            out.update(_conv(f"{p}/conv1b", 3, row.group_width, mid))
            out.update(_conv(f"{p}/conv2", 1, mid, width))
            if b == 0:  # every stage's first block changes width or stride, so it has a projection shortcut
                out.update(_conv(f"{p}/conv_shortcut", 1, cin, width))
            se = max(1, int(width * row.se_ratio))
            out.update({f"{p}/se/fc0/kernel": (width, se), f"{p}/se/fc0/bias": (se,),
                        f"{p}/se/fc1/kernel": (se, width), f"{p}/se/fc1/bias": (width,)})
            cin = width
    out.update(_conv("final_conv", 1, cin, row.final_conv_multiplier * row.widths[-1]))
    if num_classes is not None:
        out["classifier/kernel"] = (row.final_conv_multiplier * row.widths[-1], num_classes)
        out["classifier/bias"] = (num_classes,)
    return out


def infer_architecture(shapes):
    """(architecture fields of an NFNetVariant, num_classes or None) read from {weight name: shape}.

    Strides cannot be seen in weights: the NFNet pattern (1, 2, 2, 2) is assumed, and checked again by the
    shape comparison against whichever row is chosen."""
    blocks = {}
    for name in shapes:
        m = re.match(r"stage(\d+)_block(\d+)/", name)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks or "stem_conv3/kernel" not in shapes:
        raise ValueError("no NFNet weights found (expected stem_conv0..3 and stage<i>_block<j> weights)")
    stages = sorted(blocks)
    depths = tuple(max(blocks[s]) + 1 for s in stages)
    widths = tuple(shapes[f"stage{s}_block0/conv2/kernel"][-1] for s in stages)
    mids = [shapes[f"stage{s}_block0/conv0/kernel"][-1] for s in stages]
    group_width = shapes["stage0_block0/conv1/kernel"][2]
    ratio = mids[0] / widths[0]
    for r in (0.5, 0.25, ratio):  # the smallest ratio that reproduces every stage's rounded bottleneck
        if all((int(w * r) // group_width) * group_width == m for w, m in zip(widths, mids)):
            ratio = r
            break
    se = shapes["stage0_block0/se/fc0/kernel"][-1]
    arch = dict(
        depths=depths, widths=widths, group_width=group_width, bottleneck_ratio=ratio,
        se_ratio=0.5 if max(1, int(widths[0] * 0.5)) == se else se / widths[0],
        stem_widths=tuple(shapes[f"stem_conv{i}/kernel"][-1] for i in range(3)),
        final_conv_multiplier=shapes["final_conv/kernel"][-1] // widths[-1],
        strides=(1,) + (2,) * (len(stages) - 1),
    )
    head = shapes.get("classifier/kernel")
    return arch, (None if head is None else int(head[-1]))


def _same_architecture(row, arch):
    return all(getattr(row, k) == v for k, v in arch.items())


def detect_variant(shapes, variants=None):
    """The one row of `variants` (default VARIANTS) whose weights have exactly these shapes; a ValueError that
    names the file's architecture when none or several match."""
    variants = VARIANTS if variants is None else variants
    arch, num_classes = infer_architecture(shapes)
    matches = [name for name, row in variants.items()
               if _same_architecture(row, arch) and expected_shapes(row, num_classes) == dict(shapes)]
    described = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in arch.items())
    if not matches:
        raise ValueError(f"the checkpoint's architecture ({described}) matches no known variant; pass variant= "
                         f"(a name in VARIANTS or an NFNetVariant row) to load it")
    if len(matches) > 1:
        raise ValueError(f"the checkpoint's architecture ({described}) is ambiguous: it matches variants "
                         f"{', '.join(matches)}; pass variant= to choose one")
    return variants[matches[0]]


def custom_variant(shapes, name="custom", **overrides):
    """An NFNetVariant row built from the weights' shapes (resolutions and dropout from `overrides`)."""
    arch, _ = infer_architecture(shapes)
    base = dict(name=name, train_image_size=224, test_image_size=256, dropout_rate=0.0)
    base.update(overrides)
    return NFNetVariant(**{**base, **arch})


def check_shapes(found, expected, describe=lambda name: name):
    """Raise ValueError naming every missing, unexpected or wrongly shaped weight (names via `describe`)."""
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    wrong = [n for n in expected if n in found and tuple(found[n]) != tuple(expected[n])]
    problems = []
    if wrong:
        problems.append("; ".join(f"{describe(n)} has shape {tuple(found[n])}, expected {tuple(expected[n])}"
                                  for n in wrong[:5]) + (f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""))
    if missing:
        problems.append("missing " + ", ".join(f"{describe(n)} (shape {tuple(expected[n])})" for n in missing[:5])
                        + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    if extra:
        problems.append("not used by this variant: " + ", ".join(describe(n) for n in extra[:5])
                        + (f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""))
    if problems:
        raise ValueError("; ".join(problems))


def model_variables(model):
    """{weight name: variable} of an NFNet, NFNetBackbone or NFNetImageClassifier, in the names above."""
    from keras_nfnet.classifier import NFNetImageClassifier

    if isinstance(model, NFNetImageClassifier):
        out = model_variables(model.backbone)
        head = model.get_layer("classifier")
        out.update({f"classifier/{v.name}": v for v in head.weights})
        return out
    return {v.path: v for v in model.weights}


def assign(model, weights):
    """Set every variable of `model` from {weight name: array}; every array must be used and every shape match."""
    variables = model_variables(model)
    check_shapes({n: np.shape(a) for n, a in weights.items()}, {n: tuple(v.shape) for n, v in variables.items()})
    for name, variable in variables.items():
        variable.assign(np.asarray(weights[name], dtype=variable.dtype))
