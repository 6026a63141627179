"""Job configs: Python files returning an ml_collections ConfigDict, overridden on the command line with
ml_collections' config_flags, the style of DeepMind's and big_vision's trainers:

    python -m keras_nfnet.jobs.pretrain --config=cpu_tiny --config.corpus=/data/c --config.epochs=0.5 --workdir=...
    python -m keras_nfnet.jobs.pretrain --config=jft_pretrain:F3+ ...       # ':arg' goes to get_config(arg)
    python -m keras_nfnet.jobs.pretrain --config=/my/configs/big.py ...     # any file of your own

A config names a file (`path.py`) or, by its short name, one shipped in `keras_nfnet/configs/` (so an installed
package has them). The file defines `get_config(arg=None)` returning the job's schema (`keras_nfnet.jobs.defaults`)
with its own values. Each job then validates the whole config before any work, reporting every problem at once.

`check_resume` compares the config a workdir was started with to the current one: fields that change what is
computed must match; the job names the fields that only change how or how often things happen.
"""
import importlib.util
import json
import os

import ml_collections

from keras_nfnet import storage

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SAVED_CONFIG = "config.json"


def shipped():
    """Short names of the config files shipped in the package."""
    return sorted(n[:-3] for n in os.listdir(CONFIG_DIR) if n.endswith(".py") and not n.startswith("_"))


def resolve(spec):
    """'name[:arg]' or 'path.py[:arg]' -> 'absolute/path.py[:arg]'; ValueError for a file that is not there."""
    path, sep, arg = spec.partition(":")
    if not path.endswith(".py") and os.path.sep not in path and path in shipped():
        path = os.path.join(CONFIG_DIR, path + ".py")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist (give a .py file or one of the shipped configs: "
                         f"{', '.join(shipped())})")
    return os.path.abspath(path) + sep + arg


def load(spec, **overrides):
    """The locked ConfigDict of 'path.py[:arg]' (or a shipped name), with `overrides` ('a.b': value) applied."""
    path, sep, arg = resolve(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"config file {path} must define get_config(arg=None) returning a ConfigDict")
    try:
        config = module.get_config(arg) if sep else module.get_config()
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"config file {path}{sep}{arg}: get_config failed: {error}") from None
    if isinstance(config, dict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"config file {path}: get_config returned a {type(config).__name__}, not a ConfigDict")
    config.lock()
    return override(config, overrides)


def override(config, overrides):
    """A copy of `config` with `overrides` ('field' or 'a.b' -> value) applied, type-checked by ConfigDict;
    ValueError naming every unknown field and every bad value."""
    config = config.copy_and_resolve_references()
    problems = []
    for name, value in overrides.items():
        try:
            config.update_from_flattened_dict({name: value})
        except (AttributeError, KeyError):
            problems.append(f"unknown config field {name!r}")
        except TypeError:
            problems.append(f"config field {name!r} cannot take {value!r} (a {type(value).__name__})")
    if problems:
        raise ValueError("; ".join(problems) + f" (the config's fields: {', '.join(sorted(config))})")
    return config


def check_fields(config, schema):
    """Problems (list of str) with the fields of `config` against the job's `schema`: unknown, missing, mistyped."""
    problems = []
    unknown = sorted(set(config) - set(schema))
    missing = sorted(set(schema) - set(config))
    if unknown:
        problems.append(f"unknown config field(s) {unknown}; known fields: {', '.join(sorted(schema))}")
    if missing:
        problems.append(f"config lacks field(s) {missing} (start from keras_nfnet.jobs.defaults)")
    for name in sorted(set(config) & set(schema)):
        want, value = type(schema[name]), config[name]
        ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if isinstance(value, bool) and want in (int, float):
            ok = False
        if want is tuple and isinstance(value, list):
            ok = True
        if not ok:
            problems.append(f"config field {name!r} must be {want.__name__}; got {value!r}")
    return problems


def as_dict(config):
    """Plain JSON-able dict of a ConfigDict (tuples as lists)."""
    return _plain(config.to_dict())


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_resume(saved, current, resume_safe, defaults=None):
    """Raise ValueError if `current` (dict) differs from `saved` (dict) in a field outside `resume_safe`. A field
    that a run saved before it existed counts as its default (`defaults`, a dict): a newer release resumes it."""
    saved = {**{k: v for k, v in (defaults or {}).items() if k not in saved}, **saved}
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in resume_safe and saved.get(k) != current.get(k))
    if changed:
        lines = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed]
        raise ValueError("this workdir holds a run with a different config; resuming would mix two runs. "
                         "Changed fields:\n  " + "\n  ".join(lines) +
                         "\nUse a new --workdir, or restore the original values (fields that may change on "
                         f"resume: {', '.join(sorted(resume_safe))}).")


def read_saved(workdir):
    """The config a workdir's run started with (dict), or None for a new workdir."""
    path = storage.join(workdir, SAVED_CONFIG)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None
