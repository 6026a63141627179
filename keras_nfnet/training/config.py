"""Run configs: Python files with command-line overrides, big_vision style.

    --config trainers/configs/cpu_tiny.py:variant=S0,epochs=0.5 --set learning_rate=0.4 --set seed=3

A config file defines `get_config(**args)` returning a dict of `PretrainConfig` fields; the `key=value` pairs after
the ':' are overrides of those fields (applied after `get_config`, which also receives them, so a config can derive
values from e.g. the variant). `--set key=value` flags override again. Values are parsed to the field's type.

`check_resume` compares the config a workdir was started with to the current one: fields that change what is
computed (model, data, optimisation, schedule, seed) must match; fields that only change how or how often things
happen (strategy, steps per execution, checkpoint and eval intervals, logging) may differ.
"""
import dataclasses
import importlib.util
import inspect
import json
import math
import os
from typing import Optional

from keras_nfnet import architectures, storage


@dataclasses.dataclass
class PretrainConfig:
    # model
    variant: str = "S0"
    image_size: int = 0            # train px; 0 = the variant's train resolution
    eval_image_size: int = 0       # held-out px; 0 = the variant's test resolution
    stochastic_depth_rate: float = 0.0
    dropout_rate: float = -1.0     # < 0 = the variant's
    # data
    corpus: str = ""
    train_split: str = "train"
    heldout_split: str = "holdout"
    crop: bool = True
    flip: bool = True
    on_bad_record: str = "raise"   # raise: stop naming the record | skip: weight 0, counted per reason
    verify_checksums: bool = True  # SHA-256 of every shard read, at a run's first open (docs/data.md)
    # optimisation (NFNET_SPEC.md section 4)
    global_batch_size: int = 64
    epochs: float = 1.0            # epoch budget; may be fractional; the cosine schedule spans it
    base_learning_rate: float = 0.1  # per 256 examples; peak = base * batch / 256
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 1e-6
    agc_clip: float = 0.01         # <= 0 turns AGC off
    label_smoothing: float = 0.0
    seed: int = 0
    # execution
    strategy: str = "default"      # default | mirrored | multiworker | tpu
    num_cpu_devices: int = 2       # replicas for 'mirrored' on a machine without GPUs
    tpu_address: str = ""
    precision: str = "auto"        # auto (bf16 on TPU/GPU, fp32 on CPU) | float32 | mixed_bfloat16
    steps_per_execution: int = 1
    jit_compile: bool = False
    # bookkeeping
    checkpoint_every_steps: int = 100
    keep_checkpoints: int = 3
    eval_every_steps: int = 500
    log_every_steps: int = 10
    peak_flops_per_device: float = 0.0  # FLOP/s of one device for MFU; 0 = measure it at start
    verbose: int = 1               # one progress line per eval interval, in steps and corpus epochs (> 0), none (0)
    max_steps: int = 0             # stop early at this step (keeps the schedule of the full budget); 0 = off

    def to_dict(self):
        return dataclasses.asdict(self)


# Fields that may change between a run and its resumption: they change how work is executed, not its result.
RESUME_SAFE = frozenset({
    "strategy", "num_cpu_devices", "tpu_address", "steps_per_execution", "jit_compile", "checkpoint_every_steps",
    "keep_checkpoints", "eval_every_steps", "log_every_steps", "peak_flops_per_device", "verbose", "max_steps",
    "precision", "corpus",  # the corpus may move; its content is checked by fingerprint (corpus_sha256)
    # Switching to "skip" is how a run goes on past a bad record; the skips are reported. The checksums are only
    # verified at a run's first open anyway.
    "on_bad_record", "verify_checksums",
})

_FIELDS = {f.name: f for f in dataclasses.fields(PretrainConfig)}


def _parse_value(name, raw):
    kind = _FIELDS[name].type
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind) if isinstance(kind, str) else kind
    if not isinstance(raw, str):
        value = raw
    elif kind is bool:
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"config field {name!r} is a bool; got {raw!r} (use true/false).")
        value = raw.lower() in ("1", "true", "yes")
    elif kind in (int, float):
        try:
            value = kind(float(raw)) if kind is int and float(raw).is_integer() else kind(raw)
        except ValueError:
            raise ValueError(f"config field {name!r} must be {kind.__name__}; got {raw!r}.") from None
    else:
        value = raw
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"config field {name!r} must be {kind.__name__}; got {value!r}.")
    return value


def parse_overrides(text):
    """'a=1,b=x' -> {'a': '1', 'b': 'x'} (values stay strings until applied to a field)."""
    out = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        if "=" not in item:
            raise ValueError(f"config override {item!r} is not of the form key=value.")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def apply_overrides(config, overrides):
    """A copy of `config` with `overrides` (name -> value or string) applied; unknown names are errors."""
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known fields: {', '.join(sorted(_FIELDS))}.")
    return dataclasses.replace(config, **{k: _parse_value(k, v) for k, v in overrides.items()})


def call_config_file(spec, function, extra_overrides=()):
    """Run `function(**overrides)` of the Python config file named by 'path.py[:key=value,...]'.

    Overrides from the spec and then from `extra_overrides` ('key=value' strings) are passed as strings; the
    file decides what they mean. Used for run configs (get_config) and sweep declarations (get_sweep)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, function):
        raise ValueError(f"config file {path} must define {function}(**overrides) returning a dict of fields.")
    overrides = parse_overrides(arg)
    for item in extra_overrides:
        overrides.update(parse_overrides(item))
    try:
        return getattr(module, function)(**overrides), overrides
    except TypeError as e:
        accepted = list(inspect.signature(getattr(module, function)).parameters)
        raise ValueError(f"config file {path} does not accept the overrides {sorted(overrides)} ({e}); it "
                         f"accepts {accepted}.") from None


def load_config(spec, extra_overrides=()):
    """Load 'path.py[:key=value,...]' and apply `extra_overrides` ('key=value' strings) -> PretrainConfig."""
    base, overrides = call_config_file(spec, "get_config", extra_overrides)
    if isinstance(base, PretrainConfig):
        base = base.to_dict()
    config = apply_overrides(PretrainConfig(), base)
    return apply_overrides(config, overrides)


def validate(config, num_replicas=None):
    """Raise ValueError naming every bad field of `config` (and the corpus), before any heavy work starts."""
    from keras_nfnet.training.strategy import KINDS, PRECISIONS

    problems = []
    known = architectures.known_names()
    if config.variant not in known:
        problems.append(f"unknown variant {config.variant!r}; known variants (NFNet and ViT): {', '.join(known)}")
    if not (config.epochs > 0 and math.isfinite(config.epochs)):
        problems.append(f"epochs (the epoch budget) must be > 0; got {config.epochs}")
    if config.global_batch_size < 1:
        problems.append(f"global_batch_size must be >= 1; got {config.global_batch_size}")
    elif num_replicas and config.global_batch_size % num_replicas:
        problems.append(f"global_batch_size {config.global_batch_size} is not divisible by the {num_replicas} "
                        f"replicas; use a multiple of {num_replicas}")
    if config.strategy not in KINDS:
        problems.append(f"unknown strategy {config.strategy!r}; accepted: {', '.join(KINDS)}")
    if config.on_bad_record not in ("raise", "skip"):
        problems.append(f"on_bad_record must be 'raise' or 'skip'; got {config.on_bad_record!r}")
    if config.precision not in PRECISIONS:
        problems.append(f"unknown precision {config.precision!r}; accepted: {', '.join(PRECISIONS)}")
    if not config.base_learning_rate > 0:
        problems.append(f"base_learning_rate must be > 0; got {config.base_learning_rate}")
    if config.warmup_epochs < 0 or config.warmup_epochs >= config.epochs > 0:
        problems.append(f"warmup_epochs must be in [0, epochs={config.epochs}); got {config.warmup_epochs}")
    for name in ("steps_per_execution", "checkpoint_every_steps", "keep_checkpoints", "eval_every_steps",
                 "log_every_steps"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be >= 1; got {getattr(config, name)}")
    if config.steps_per_execution > 1:
        for name in ("checkpoint_every_steps", "eval_every_steps", "log_every_steps"):
            if getattr(config, name) % config.steps_per_execution:
                problems.append(f"{name}={getattr(config, name)} must be a multiple of steps_per_execution="
                                f"{config.steps_per_execution} (steps run in groups of that size)")
    if config.max_steps < 0 or (config.max_steps and config.max_steps % config.steps_per_execution):
        problems.append(f"max_steps must be 0 (off) or a positive multiple of steps_per_execution; got "
                        f"{config.max_steps}")
    for name in ("image_size", "eval_image_size"):
        size = getattr(config, name)
        if size and config.variant in known and size < architectures.get_row(config.variant).min_image_size:
            problems.append(f"{name}={size} is below the smallest image {config.variant} accepts "
                            f"({architectures.get_row(config.variant).min_image_size} px)")
        elif size and config.variant in known and size % getattr(architectures.get_row(config.variant), "patch_size", 1):
            problems.append(f"{name}={size} is not a multiple of {config.variant}'s patch size "
                            f"({architectures.get_row(config.variant).patch_size} px)")
    if not config.corpus:
        problems.append("corpus is not set (the directory of a corpus made by datasets/)")
    elif not storage.exists(storage.join(config.corpus, "metadata.json")):
        problems.append(f"corpus {config.corpus} is missing or not a corpus (no metadata.json there)")
    else:
        from keras_nfnet.data.corpus import load_metadata

        info = load_metadata(config.corpus)
        for split in (config.train_split, config.heldout_split):
            if split not in info.splits:
                problems.append(f"corpus {config.corpus} has no split {split!r}; it has {sorted(info.splits)}")
        if config.train_split in info.splits and not problems:
            n = info.split(config.train_split).num_examples
            if n < config.global_batch_size:
                problems.append(f"split {config.train_split!r} has {n} examples, fewer than one global batch "
                                f"({config.global_batch_size})")
    if problems:
        raise ValueError("bad pretraining config:\n  - " + "\n  - ".join(problems))


def total_steps(config, num_train_examples):
    """Steps of the epoch budget: ceil(epochs x examples / batch), rounded up to whole steps_per_execution groups."""
    steps = max(1, math.ceil(config.epochs * num_train_examples / config.global_batch_size))
    spe = config.steps_per_execution
    return -(-steps // spe) * spe


def check_resume(saved, current):
    """Raise ValueError if `current` (dict) differs from `saved` (dict) in a field that changes the result."""
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUME_SAFE and saved.get(k) != current.get(k))
    if changed:
        lines = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed]
        raise ValueError("this workdir holds a run with a different config; resuming would mix two runs. "
                         "Changed fields:\n  " + "\n  ".join(lines) +
                         "\nUse a new --workdir, or restore the original values (fields that may change on "
                         f"resume: {', '.join(sorted(RESUME_SAFE))}).")


def read_config(path) -> Optional[dict]:
    if not storage.exists(path):
        return None
    return json.loads(storage.read_text(path))
