"""DeepMind's released NFNet checkpoints: Haiku parameter trees {module path: {param: array}}.

Module paths, as Haiku names them in the release's `NFNet` (root module "NFNet"):
    NFNet/~/stem_conv0 .. stem_conv3            w (HWIO), gain, bias
    NFNet/~/nf_block, nf_block_1, ...           skip_gain (blocks numbered over the whole network)
    NFNet/~/nf_block_N/~/conv0|conv1|conv1b|conv2|conv_shortcut          w, gain, bias
    NFNet/~/nf_block_N/~/squeeze_excite/~/linear, .../linear_1           w (in, out), b
    NFNet/~/final_conv                          w, gain, bias
    NFNet/~/linear                              w, b (the classifier)
Layouts equal Keras's, so only names change. A stage starts at each block that has a conv_shortcut.
"""
import re

NAME = "deepmind"
_BLOCK = re.compile(r"^(?P<root>[^/]+)/~/nf_block(?:_(?P<index>\d+))?(?:/~/(?P<module>.+))?/(?P<param>[^/]+)$")
_TOP = re.compile(r"^(?P<root>[^/]+)/~/(?P<module>stem_conv[0-3]|final_conv|linear)/(?P<param>[^/]+)$")
_CONV_PARAMS = {"w": "kernel", "gain": "gain", "bias": "bias"}
_LINEAR_PARAMS = {"w": "kernel", "b": "bias"}
_BLOCK_MODULES = {"conv0": "conv0", "conv1": "conv1", "conv1b": "conv1b", "conv2": "conv2",
                  "conv_shortcut": "conv_shortcut", "squeeze_excite/~/linear": "se/fc0",
                  "squeeze_excite/~/linear_1": "se/fc1"}


def looks_like(names):
    return any("/~/" in n for n in names)


def root_of(names):
    """The root module name of a Haiku tree's paths ("NFNet" in the release)."""
    roots = {n.split("/~/", 1)[0] for n in names}
    return roots.pop() if len(roots) == 1 else "NFNet"


def parse(names):
    """{source name: Keras weight name}; ValueError listing the names that are not NFNet parameters."""
    names = list(names)
    parsed, unknown = {}, []
    blocks = {}  # global index -> has a shortcut
    for name in names:
        m = _BLOCK.match(name)
        if m:
            index = int(m.group("index") or 0)
            blocks[index] = blocks.get(index, False) or m.group("module") == "conv_shortcut"
    starts = sorted(i for i, shortcut in blocks.items() if shortcut or i == 0)
    position = {}
    for i in sorted(blocks):
        stage = sum(1 for s in starts if s <= i) - 1
        position[i] = (stage, i - starts[stage])
    for name in names:
        top, block = _TOP.match(name), _BLOCK.match(name)
        if top:
            module, param = top.group("module"), top.group("param")
            table = _LINEAR_PARAMS if module == "linear" else _CONV_PARAMS
            if param in table:
                parsed[name] = f"{'classifier' if module == 'linear' else module}/{table[param]}"
                continue
        elif block:
            stage, b = position[int(block.group("index") or 0)]
            module, param = block.group("module"), block.group("param")
            prefix = f"stage{stage}_block{b}"
            if module is None and param == "skip_gain":
                parsed[name] = f"{prefix}/skip_gain"
                continue
            if module in _BLOCK_MODULES:
                table = _LINEAR_PARAMS if module.startswith("squeeze") else _CONV_PARAMS
                if param in table:
                    parsed[name] = f"{prefix}/{_BLOCK_MODULES[module]}/{table[param]}"
                    continue
        unknown.append(name)
    if unknown:
        raise ValueError(f"not NFNet parameters in DeepMind's layout: {', '.join(unknown[:8])}"
                         + (f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    return parsed


def source_name(keras_name, row, root="NFNet"):
    """The module path/parameter that holds Keras weight `keras_name` of a `row` network."""
    parts = keras_name.split("/")
    param = parts[-1]
    m = re.match(r"stage(\d+)_block(\d+)$", parts[0])
    if not m:
        module = "linear" if parts[0] == "classifier" else parts[0]
        table = _LINEAR_PARAMS if module == "linear" else _CONV_PARAMS
        return f"{root}/~/{module}/{_inverse(table)[param]}"
    index = sum(row.depths[:int(m.group(1))]) + int(m.group(2))
    block = f"{root}/~/nf_block" + (f"_{index}" if index else "")
    if param == "skip_gain":
        return f"{block}/skip_gain"
    sub = "/".join(parts[1:-1])
    module = _inverse(_BLOCK_MODULES)[sub]
    table = _LINEAR_PARAMS if sub.startswith("se/") else _CONV_PARAMS
    return f"{block}/~/{module}/{_inverse(table)[param]}"


def _inverse(table):
    return {v: k for k, v in table.items()}


def to_keras(keras_name, array):
    return array


def source_shape(keras_name, shape):
    return tuple(shape)
