"""Reading checkpoint files into {name: numpy array} without the framework that wrote them and without running
code from them: safetensors (a JSON header and raw bytes), PyTorch's zip checkpoints (`.pth`/`.pt` since torch
1.6: a pickle whose tensors point at raw storage files, read with `SafeUnpickler`), numpy `.npz` (no pickles) and
plain pickles of array trees (DeepMind's Haiku `.npz` files are such pickles).
"""
import collections
import io
import json
import os
import struct
import zipfile

import numpy as np

from keras_nfnet.converters.safe_pickle import SafeUnpickler, UnsafePickleError, load_pickle

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16", "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_TORCH_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _from_bytes(buffer, dtype, source):
    """1-D array over `buffer`; bfloat16 (which numpy lacks) widened exactly to float32."""
    if dtype == "bfloat16":
        if len(buffer) % 2:
            raise ValueError(f"{source}: bfloat16 data of odd length {len(buffer)}")
        return (np.frombuffer(buffer, "<u2").astype(np.uint32) << 16).view(np.float32)
    itemsize = np.dtype(dtype).itemsize
    if len(buffer) % itemsize:
        raise ValueError(f"{source}: {len(buffer)} bytes is not a whole number of {np.dtype(dtype).name} values")
    return np.frombuffer(buffer, np.dtype(dtype).newbyteorder("<"))


def read_safetensors(path):
    """{name: array} of a .safetensors file (the header's `__metadata__` is skipped)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError(f"{path}: safetensors header length {header_len} runs past the end of the file")
    try:
        header = json.loads(data[8:8 + header_len])
    except ValueError:
        raise ValueError(f"{path}: safetensors header is not valid JSON") from None
    body = memoryview(data)[8 + header_len:]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(spec.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {spec.get('dtype')!r}")
        begin, end = spec["data_offsets"]
        if not 0 <= begin <= end <= len(body):
            raise ValueError(f"{path}: tensor {name!r} data offsets {begin}..{end} outside the data section")
        flat = _from_bytes(body[begin:end], dtype, f"{path}: {name}")
        shape = tuple(int(n) for n in spec["shape"])
        if flat.size != int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {name!r} holds {flat.size} values for shape {shape}")
        out[name] = flat.reshape(shape).copy()
    return out


class _StorageType:
    """What a torch storage class name (e.g. torch.FloatStorage) resolves to: just its element type."""

    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2 on a numpy storage, with the view bounds checked before it is taken."""
    size, stride, offset = tuple(int(n) for n in size), tuple(int(n) for n in stride), int(offset)
    if len(size) != len(stride) or offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise ValueError(f"bad tensor view: offset {offset}, size {size}, stride {stride}")
    if any(n == 0 for n in size):
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ValueError(f"tensor view (offset {offset}, size {size}, stride {stride}) runs past its storage of "
                         f"{storage.size} values")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * item for s in stride])
    return np.array(view)


def read_torch_zip(path):
    """{name: array} of a PyTorch zip checkpoint holding a state dict (optionally under 'state_dict'/'model')."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a PyTorch zip checkpoint (expected one data.pkl, found {pickles})")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        storages = {}

        def persistent_load(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                    and isinstance(pid[1], _StorageType)):
                raise UnsafePickleError(f"{path}: unexpected persistent reference {pid!r}")
            key = str(pid[2])
            if key not in storages:
                storages[key] = _from_bytes(archive.read(f"{prefix}data/{key}"), pid[1].dtype, f"{path}: {key}")
            return storages[key]

        allowed = {("collections", "OrderedDict"): collections.OrderedDict,
                   ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                   ("torch._utils", "_rebuild_tensor"): _rebuild_tensor}
        allowed.update({("torch", name): _StorageType(dtype) for name, dtype in _TORCH_STORAGES.items()})
        unpickler = SafeUnpickler(io.BytesIO(archive.read(pickles[0])), allowed=allowed,
                                  persistent_load=persistent_load, source=str(path))
        try:
            tree = unpickler.load()
        except UnsafePickleError:
            raise
        except Exception as error:  # a damaged pickle can fail in many ways; none of them ran foreign code
            raise ValueError(f"{path}: unreadable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    for key in ("state_dict", "model"):
        if isinstance(tree, dict) and isinstance(tree.get(key), dict) and len(tree) <= 4:
            tree = tree[key]
    if not isinstance(tree, dict) or not all(isinstance(v, np.ndarray) for v in tree.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return dict(tree)


def _flatten(tree, prefix=""):
    """{"module/param": array} of a nested dict of arrays; the last '/' separates module and parameter."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, np.ndarray) or np.isscalar(value):
            out[name] = np.asarray(value)
        else:
            raise ValueError(f"unexpected {type(value).__name__} at {name!r} in a parameter tree")
    return out


def read_tensors(path):
    """{name: array} from any supported file, chosen by its leading bytes (not its suffix: DeepMind's `.npz`
    files are pickles). Nested trees are flattened with '/' between module and parameter names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK"):
        with zipfile.ZipFile(path) as archive:
            is_torch = any(n.endswith("data.pkl") for n in archive.namelist())
        if is_torch:
            return read_torch_zip(path)
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    if head[:1] == b"\x80":
        tree = load_pickle(path)
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: expected a pickled dict of parameters, got {type(tree).__name__}")
        return _flatten(tree)
    if len(head) >= 9 and head[8:9] == b"{":
        return read_safetensors(path)
    raise ValueError(f"{path}: unknown checkpoint format (expected safetensors, a PyTorch zip checkpoint, .npz or a "
                     "pickled Haiku parameter tree)")
