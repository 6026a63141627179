"""timm's `dm_nfnet_*` state dicts (PyTorch layouts, timm's module names).

    stem.conv1..conv4.{weight,bias,gain}               -> stem_conv0..3
    stages.S.B.conv1|conv2|conv2b|conv3.*              -> stageS_blockB/conv0|conv1|conv1b|conv2
    stages.S.B.downsample.conv.*                       -> stageS_blockB/conv_shortcut
    stages.S.B.attn_last.fc1|fc2.{weight,bias}         -> stageS_blockB/se/fc0|fc1 (1x1 convs -> Dense)
    stages.S.B.skipinit_gain                           -> stageS_blockB/skip_gain
    final_conv.*, head.fc.*                            -> final_conv, classifier
Conv weights are OIHW (Keras: HWIO), gains (O, 1, 1, 1) (Keras: (O,)), Linear weights (out, in).
"""
import re

import numpy as np

NAME = "timm"
_CONVS = {"conv1": "conv0", "conv2": "conv1", "conv2b": "conv1b", "conv3": "conv2", "downsample.conv": "conv_shortcut"}
_CONV_PARAMS = {"weight": "kernel", "gain": "gain", "bias": "bias"}
_LINEAR_PARAMS = {"weight": "kernel", "bias": "bias"}


def looks_like(names):
    return any(n.startswith("stem.conv1.") for n in names)


def parse(names):
    """{source name: Keras weight name}; ValueError listing the names that are not NFNet parameters."""
    parsed, unknown = {}, []
    for name in names:
        m = re.match(r"^stem\.conv([1-4])\.(weight|gain|bias)$", name)
        if m:
            parsed[name] = f"stem_conv{int(m.group(1)) - 1}/{_CONV_PARAMS[m.group(2)]}"
            continue
        m = re.match(r"^final_conv\.(weight|gain|bias)$", name)
        if m:
            parsed[name] = f"final_conv/{_CONV_PARAMS[m.group(1)]}"
            continue
        m = re.match(r"^head\.fc\.(weight|bias)$", name)
        if m:
            parsed[name] = f"classifier/{_LINEAR_PARAMS[m.group(1)]}"
            continue
        m = re.match(r"^stages\.(\d+)\.(\d+)\.(.+)$", name)
        if m:
            prefix, rest = f"stage{m.group(1)}_block{m.group(2)}", m.group(3)
            if rest == "skipinit_gain":
                parsed[name] = f"{prefix}/skip_gain"
                continue
            module, _, param = rest.rpartition(".")
            if module in _CONVS and param in _CONV_PARAMS:
                parsed[name] = f"{prefix}/{_CONVS[module]}/{_CONV_PARAMS[param]}"
                continue
            if module in ("attn_last.fc1", "attn_last.fc2") and param in _LINEAR_PARAMS:
                parsed[name] = f"{prefix}/se/fc{int(module[-1]) - 1}/{_LINEAR_PARAMS[param]}"
                continue
        unknown.append(name)
    if unknown:
        raise ValueError(f"not NFNet parameters in timm's layout: {', '.join(unknown[:8])}"
                         + (f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    return parsed


def source_name(keras_name, row=None, root=None):
    parts = keras_name.split("/")
    param = parts[-1]
    if parts[0].startswith("stem_conv"):
        return f"stem.conv{int(parts[0][-1]) + 1}.{_inv(_CONV_PARAMS)[param]}"
    if parts[0] == "final_conv":
        return f"final_conv.{_inv(_CONV_PARAMS)[param]}"
    if parts[0] == "classifier":
        return f"head.fc.{_inv(_LINEAR_PARAMS)[param]}"
    stage, block = re.match(r"stage(\d+)_block(\d+)$", parts[0]).groups()
    prefix = f"stages.{stage}.{block}"
    if param == "skip_gain":
        return f"{prefix}.skipinit_gain"
    if parts[1] == "se":
        return f"{prefix}.attn_last.fc{int(parts[2][-1]) + 1}.{_inv(_LINEAR_PARAMS)[param]}"
    return f"{prefix}.{_inv(_CONVS)[parts[1]]}.{_inv(_CONV_PARAMS)[param]}"


def _inv(table):
    return {v: k for k, v in table.items()}


def _kind(keras_name):
    parts = keras_name.split("/")
    if parts[-1] == "skip_gain":
        return "scalar"
    if parts[0] == "classifier":
        return "linear"
    if len(parts) > 2 and parts[-3] == "se":
        return "se"
    return "conv"


def to_keras(keras_name, array):
    """timm layout -> Keras layout for one tensor."""
    kind, param = _kind(keras_name), keras_name.rsplit("/", 1)[-1]
    if kind == "conv" and param == "kernel":
        return np.transpose(array, (2, 3, 1, 0))
    if kind == "conv" and param == "gain":
        return np.reshape(array, (-1,))
    if kind == "se" and param == "kernel":
        return np.transpose(np.reshape(array, array.shape[:2]))
    if kind == "linear" and param == "kernel":
        return np.transpose(array)
    return array


def source_shape(keras_name, shape):
    """The shape timm stores for a Keras weight of `shape`."""
    kind, param = _kind(keras_name), keras_name.rsplit("/", 1)[-1]
    shape = tuple(shape)
    if kind == "conv" and param == "kernel":
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    if kind == "conv" and param == "gain":
        return (shape[0], 1, 1, 1)
    if kind == "se" and param == "kernel":
        return (shape[1], shape[0], 1, 1)
    if kind == "linear" and param == "kernel":
        return (shape[1], shape[0])
    return shape
