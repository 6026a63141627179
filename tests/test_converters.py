"""Released-checkpoint converters: parity with timm on a committed fixture (both numerics, safetensors and .pth),
DeepMind's Haiku layout built here from its documented module paths (values land in the right variables; F0-F6
shapes and parameter counts), safe loading of pickles, and the errors for wrong variant, missing, unused and
unknown tensors.

The fixture is written by tests/fixtures/make_timm_nfnet_fixture.py (torch + timm, not needed here).
"""
import os
import pickle
import zipfile

import numpy as np
import pytest

from keras_nfnet.converters import UnsafePickleError, convert_tensors, infer_variant, load_checkpoint
from keras_nfnet.converters import layout
from keras_nfnet.flops import count_params
from keras_nfnet.variants import VARIANTS

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FIXTURE = os.path.join(FIXTURES, "timm_nfnet_small")


def relative_error(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE + ".npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def small_row():
    from keras_nfnet.converters.tensor_files import read_tensors

    return infer_variant(read_tensors(FIXTURE + ".safetensors"), name="small", test_image_size=64)


# --- parity with timm --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_timm_checkpoint_gives_timms_logits_in_both_numerics(suffix, reference, small_row):
    converted = load_checkpoint(f"{FIXTURE}.{suffix}", variant=small_row)
    assert converted.source_format == "timm" and converted.numerics == "timm" and converted.num_classes == 7
    for numerics, other in (("timm", "deepmind"), ("deepmind", "timm")):
        model = converted.classifier(numerics=numerics)
        logits = model.predict(reference["images"], verbose=0)
        assert relative_error(logits, reference[f"logits_{numerics}"]) < 1e-4, numerics
        # the two references differ by far more than the tolerance, so the switch is what makes this pass
        assert relative_error(logits, reference[f"logits_{other}"]) > 1e-2, numerics


def test_pth_and_safetensors_hold_the_same_tensors():
    from keras_nfnet.converters.tensor_files import read_torch_zip, read_safetensors

    a, b = read_safetensors(FIXTURE + ".safetensors"), read_torch_zip(FIXTURE + ".pth")
    assert sorted(a) == sorted(b) and len(a) == 114
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_fixture_is_small():
    total = sum(os.path.getsize(os.path.join(FIXTURES, f)) for f in os.listdir(FIXTURES))
    assert total < 2 * 1024 * 1024


def test_timm_dm_nfnet_f0_layout_is_detected():
    """The names and shapes of timm's full-size dm_nfnet_f0 (written by the fixture script from timm itself)."""
    import json

    with open(os.path.join(FIXTURES, "timm_dm_nfnet_f0_shapes.json")) as f:
        shapes = json.load(f)
    tensors = {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}
    converted = convert_tensors(tensors)
    assert converted.variant.name == "F0" and converted.source_format == "timm" and converted.num_classes == 1000
    assert len(tensors) == len(converted.weights) == 233
    assert sum(int(np.prod(a.shape)) for a in converted.weights.values()) == count_params("F0") == 71_489_284


# --- DeepMind's layout, built from the documented module paths -----------------------------------------------------

def deepmind_tree(depths, widths, stem=(16, 32, 64), group=128, num_classes=1000, make=None):
    """A Haiku parameter tree of the released layout for this architecture (independent of the converter):
    NFNet/~/stem_conv0..3, NFNet/~/nf_block[_N] (blocks numbered over the whole net, the first unnumbered),
    .../~/conv0|conv1|conv1b|conv2|conv_shortcut (w, gain, bias), .../~/squeeze_excite/~/linear[_1] (w, b),
    NFNet/~/final_conv, NFNet/~/linear."""
    make = make or (lambda name, shape: np.broadcast_to(np.float32(0), shape))  # shapes only, no memory
    tree = {}

    def conv(module, k, cin, cout):
        tree[f"NFNet/~/{module}"] = {"w": make(f"NFNet/~/{module}/w", (k, k, cin, cout)),
                                     "gain": make(f"NFNet/~/{module}/gain", (cout,)),
                                     "bias": make(f"NFNet/~/{module}/bias", (cout,))}

    cin = 3
    for i, c in enumerate(list(stem) + [widths[0] // 2]):
        conv(f"stem_conv{i}", 3, cin, c)
        cin = c
    index = 0
    for depth, width in zip(depths, widths):
        mid = int(width * 0.5) // group * group
        for b in range(depth):
            block = "nf_block" if index == 0 else f"nf_block_{index}"
            tree[f"NFNet/~/{block}"] = {"skip_gain": make(f"NFNet/~/{block}/skip_gain", ())}
            conv(f"{block}/~/conv0", 1, cin, mid)
            conv(f"{block}/~/conv1", 3, group, mid)
            conv(f"{block}/~/conv1b", 3, group, mid)
            conv(f"{block}/~/conv2", 1, mid, width)
            if b == 0:
                conv(f"{block}/~/conv_shortcut", 1, cin, width)
            se = int(width * 0.5)
            for name, shape_in, shape_out in (("linear", width, se), ("linear_1", se, width)):
                path = f"NFNet/~/{block}/~/squeeze_excite/~/{name}"
                tree[path] = {"w": make(path + "/w", (shape_in, shape_out)), "b": make(path + "/b", (shape_out,))}
            cin = width
            index += 1
    conv("final_conv", 1, cin, 2 * widths[-1])
    tree["NFNet/~/linear"] = {"w": make("NFNet/~/linear/w", (2 * widths[-1], num_classes)),
                              "b": make("NFNet/~/linear/b", (num_classes,))}
    return tree


def flat(tree):
    return {f"{module}/{param}": value for module, params in tree.items() for param, value in params.items()}


# Published parameter counts (NFNET_SPEC section 1), millions.
PUBLISHED_PARAMS = {"F0": 71.5, "F1": 132.6, "F2": 193.8, "F3": 254.9, "F4": 316.1, "F5": 377.2, "F6": 438.4}


@pytest.mark.parametrize("n", range(7))
def test_deepmind_layout_f0_to_f6_detected_and_counted(n):
    name = f"F{n}"
    tree = deepmind_tree([d * (n + 1) for d in (1, 2, 6, 3)], [256, 512, 1536, 1536])
    converted = convert_tensors(flat(tree))
    assert converted.variant.name == name and converted.source_format == "deepmind"
    assert converted.num_classes == 1000 and converted.numerics == "deepmind"
    assert len(converted.weights) == len(flat(tree))  # every tensor consumed
    total = sum(int(np.prod(a.shape)) for a in converted.weights.values())
    assert total == count_params(name)
    assert round(total / 1e6, 1) == PUBLISHED_PARAMS[name]
    assert {n: a.shape for n, a in converted.weights.items()} == layout.expected_shapes(name, 1000)


def test_deepmind_file_loads_into_the_right_variables(tmp_path):
    """Each tensor gets a distinct constant; after loading, every Keras variable holds the constant of the module
    path the documented layout says it comes from."""
    values = {}

    def make(name, shape):
        values[name] = float(len(values) + 1)
        return np.full(shape, values[name], np.float32)

    tree = deepmind_tree((1, 1, 1, 1), (8, 16, 16, 16), stem=(4, 4, 8), group=4, num_classes=10, make=make)
    path = tmp_path / "tiny_haiku.npz"  # DeepMind's files are pickles under a .npz name
    path.write_bytes(pickle.dumps(tree, protocol=4))
    converted = load_checkpoint(str(path))
    assert converted.variant.name == "tiny"
    model = converted.classifier()
    variables = layout.model_variables(model)
    assert len(variables) == len(values)
    expected = {"stem_conv2/kernel": "NFNet/~/stem_conv2/w", "stage0_block0/skip_gain": "NFNet/~/nf_block/skip_gain",
                "stage2_block0/conv1b/gain": "NFNet/~/nf_block_2/~/conv1b/gain",
                "stage3_block0/conv_shortcut/bias": "NFNet/~/nf_block_3/~/conv_shortcut/bias",
                "stage1_block0/se/fc0/kernel": "NFNet/~/nf_block_1/~/squeeze_excite/~/linear/w",
                "stage1_block0/se/fc1/bias": "NFNet/~/nf_block_1/~/squeeze_excite/~/linear_1/b",
                "final_conv/kernel": "NFNet/~/final_conv/w", "classifier/kernel": "NFNet/~/linear/w",
                "classifier/bias": "NFNet/~/linear/b"}
    for keras_name, source in expected.items():
        np.testing.assert_array_equal(np.asarray(variables[keras_name]), values[source], err_msg=keras_name)
    seen = {float(np.asarray(v).flat[0]) for v in variables.values()}
    assert seen == set(values.values())  # every source tensor landed somewhere, none twice


def test_deepmind_layout_gives_deepmind_logits(tmp_path, reference, small_row):
    """The fixture's weights re-laid out as a Haiku tree (timm OIHW -> HWIO here) reproduce the DeepMind-numerics
    reference through the DeepMind converter."""
    from keras_nfnet.converters.tensor_files import read_safetensors

    timm_state = read_safetensors(FIXTURE + ".safetensors")

    def make(name, shape):
        return np.zeros(shape, np.float32)

    tree = deepmind_tree(small_row.depths, small_row.widths, stem=small_row.stem_widths, group=8, num_classes=7,
                         make=make)
    starts = np.cumsum((0,) + small_row.depths)
    timm_conv = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3",
                 "conv_shortcut": "downsample.conv"}

    def put_conv(module, prefix):
        tree[module]["w"] = np.transpose(timm_state[prefix + ".weight"], (2, 3, 1, 0))
        tree[module]["gain"] = timm_state[prefix + ".gain"].reshape(-1)
        tree[module]["bias"] = timm_state[prefix + ".bias"]

    for i in range(4):
        put_conv(f"NFNet/~/stem_conv{i}", f"stem.conv{i + 1}")
    put_conv("NFNet/~/final_conv", "final_conv")
    tree["NFNet/~/linear"] = {"w": timm_state["head.fc.weight"].T, "b": timm_state["head.fc.bias"]}
    for stage, depth in enumerate(small_row.depths):
        for b in range(depth):
            index = starts[stage] + b
            block = "NFNet/~/nf_block" + (f"_{index}" if index else "")
            t = f"stages.{stage}.{b}"
            tree[block]["skip_gain"] = timm_state[t + ".skipinit_gain"]
            for module, timm_module in timm_conv.items():
                if f"{block}/~/{module}" in tree:
                    put_conv(f"{block}/~/{module}", f"{t}.{timm_module}")
            for name, fc in (("linear", "fc1"), ("linear_1", "fc2")):
                tree[f"{block}/~/squeeze_excite/~/{name}"] = {
                    "w": timm_state[f"{t}.attn_last.{fc}.weight"][:, :, 0, 0].T,
                    "b": timm_state[f"{t}.attn_last.{fc}.bias"]}
    path = tmp_path / "small_haiku.npz"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    converted = load_checkpoint(str(path), variant=small_row)
    assert converted.numerics == "deepmind"
    logits = converted.classifier().predict(reference["images"], verbose=0)
    assert relative_error(logits, reference["logits_deepmind"]) < 1e-4


# --- safe loading ------------------------------------------------------------------------------------------------

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_haiku_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "F0_haiku.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/stem_conv0": {"w": _RunsCode(marker)}}))
    with pytest.raises(UnsafePickleError, match=r"refusing to load '(posix|os|nt)\.system'"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_malicious_pth_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "dm_nfnet_f0.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"stem.conv1.weight": _RunsCode(marker)}))
        archive.writestr("archive/version", "3\n")
    with pytest.raises(UnsafePickleError, match=r"refusing to load '(posix|os|nt)\.system'"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_non_numeric_arrays_are_refused(tmp_path):
    tree = deepmind_tree((1, 1, 1, 1), (8, 16, 16, 16), stem=(4, 4, 8), group=4, num_classes=10)
    tree["NFNet/~/linear"]["b"] = np.array(["x"] * 10, dtype=object)
    path = tmp_path / "objects.npz"
    path.write_bytes(pickle.dumps(tree))
    with pytest.raises(ValueError, match=r"NFNet/~/linear/b holds object values, not numbers"):
        load_checkpoint(str(path))


def test_damaged_files_are_clear_errors(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/stem_conv0": {"w": np.zeros(3)}})[:-10])
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_checkpoint(str(path))
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")
    with pytest.raises(ValueError):
        load_checkpoint(str(path))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "absent.safetensors"))


# --- mismatches --------------------------------------------------------------------------------------------------

def test_wrong_variant_names_tensor_and_shapes():
    with pytest.raises(ValueError, match=r"does not fit variant tiny: stem\.conv1\.weight has shape \(2, 3, 3, 3\), "
                                         r"expected \(4, 3, 3, 3\)"):
        load_checkpoint(FIXTURE + ".safetensors", variant="tiny")
    tree = flat(deepmind_tree((1, 2, 6, 3), [256, 512, 1536, 1536]))
    # F0's block 1 opens stage 1 (256 -> 512); F1's block 1 is stage 0's second block (bottleneck 128)
    with pytest.raises(ValueError, match=r"does not fit variant F1: NFNet/~/nf_block_1/~/conv0/w has shape "
                                         r"\(1, 1, 256, 256\), expected \(1, 1, 256, 128\);.*missing "
                                         r"NFNet/~/nf_block_2/~/conv_shortcut/w"):
        convert_tensors(tree, variant="F1")


def test_missing_tensor_is_named():
    tree = flat(deepmind_tree((1, 2, 6, 3), [256, 512, 1536, 1536]))
    del tree["NFNet/~/nf_block_4/~/conv1b/w"]
    with pytest.raises(ValueError, match=r"missing NFNet/~/nf_block_4/~/conv1b/w \(shape \(3, 3, 128, 768\)\)"):
        convert_tensors(tree, variant="F0")
    with pytest.raises(ValueError, match="matches no known variant"):
        convert_tensors(tree)  # the gap also defeats detection, with a message that says so


def test_unused_and_unknown_tensors_are_named():
    tree = flat(deepmind_tree((1, 2, 6, 3), [256, 512, 1536, 1536]))
    extra = dict(tree, **{"NFNet/~/nf_block_12/skip_gain": np.float32(1)})
    with pytest.raises(ValueError, match=r"not used by this variant: NFNet/~/nf_block_12/skip_gain"):
        convert_tensors(extra, variant="F0")
    with pytest.raises(ValueError, match=r"not NFNet parameters in DeepMind's layout: NFNet/~/batchnorm/scale"):
        convert_tensors(dict(tree, **{"NFNet/~/batchnorm/scale": np.zeros(3)}))
    with pytest.raises(ValueError, match="cannot tell the checkpoint's layout"):
        convert_tensors({"encoder.weight": np.zeros(3)})


def test_ambiguous_variant_is_an_error():
    tree = flat(deepmind_tree((1, 2, 6, 3), [256, 512, 1536, 1536]))
    twins = {"F0": VARIANTS["F0"], "F0-copy": VARIANTS["F0"]}
    from keras_nfnet.converters.convert import _parse

    _, _, shapes = _parse(tree, None, "")
    with pytest.raises(ValueError, match="ambiguous: it matches variants F0, F0-copy; pass variant="):
        layout.detect_variant(shapes, variants=twins)


def test_expected_shapes_match_built_models():
    from keras_nfnet.models import NFNet

    for name in ("tiny", "S1", "S3"):
        model = NFNet(name, num_classes=5)
        built = {v.path: tuple(v.shape) for v in model.weights}
        assert list(built.items()) == list(layout.expected_shapes(name, 5).items()), name
