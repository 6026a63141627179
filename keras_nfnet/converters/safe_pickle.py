"""Reading pickle-based checkpoint files without running code from them.

A pickle can name any importable callable and call it on load. `SafeUnpickler` resolves only the names a
parameter tree of numpy arrays needs (numpy's array and scalar reconstructors, dtypes, OrderedDict) and refuses
every other global with `UnsafePickleError`, naming it, before anything is called.
"""
import collections
import io
import pickle

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar


class UnsafePickleError(ValueError):
    """The file asks to import or call something outside the allowed array/container types."""


def _mapping(*args, **kwargs):
    """Stand-in for mapping containers of parameter trees (e.g. Haiku's frozen mappings): a plain dict."""
    return dict(*args, **kwargs)


# (module, name) -> what it resolves to. numpy moved `core` to `_core` in 2.0; both spellings occur in files.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_core, "_reconstruct")] = _reconstruct
    _ALLOWED[(_core, "scalar")] = scalar
for _name in ("FlatMapping", "FlatMap"):
    _ALLOWED[("haiku._src.data_structures", _name)] = _mapping


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `allowed` globals; persistent ids go to `persistent_load` if given."""

    def __init__(self, file, allowed=None, persistent_load=None, source="pickle"):
        super().__init__(file)
        self._allowed = dict(_ALLOWED if allowed is None else allowed)
        self._persistent = persistent_load
        self._source = source

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load '{module}.{name}': the file asks to import it, and only array "
                f"and container types may be loaded from a checkpoint (allowed: "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in self._allowed))})"
            ) from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError(f"{self._source}: unexpected persistent reference {pid!r} in a plain pickle")
        return self._persistent(pid)


def load_pickle(path, allowed=None):
    """Unpickle `path` with SafeUnpickler; raise UnsafePickleError for disallowed globals, ValueError if damaged."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return SafeUnpickler(io.BytesIO(data), allowed=allowed, source=str(path)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise ValueError(f"{path}: not a readable pickle of arrays ({type(error).__name__}: {error})") from None
