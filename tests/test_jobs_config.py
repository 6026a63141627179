"""Job configs (ml_collections ConfigDicts from Python files): shipped configs by short name or path, overrides with
type checks, errors naming every bad field, the resume compatibility check, epoch budgets -> steps, and the paper
configs against NFNET_SPEC.md."""
import os

import ml_collections
import pytest

from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs import defaults
from keras_nfnet.jobs import pretrain


def test_short_name_path_arg_and_overrides():
    config = config_lib.load("cpu_tiny", variant="S1", epochs=0.25, jit_compile=True, global_batch_size=32, seed=7)
    assert (config.variant, config.epochs, config.jit_compile, config.global_batch_size, config.seed) == \
        ("S1", 0.25, True, 32, 7)
    assert config.image_size == 32  # from the file
    by_path = config_lib.load(os.path.join(config_lib.CONFIG_DIR, "cpu_tiny.py"))
    assert by_path.to_dict() == config_lib.load("cpu_tiny").to_dict()
    assert config_lib.load("cpu_tiny", epochs=2).epochs == 2.0  # an int is a float field's value
    with pytest.raises(AttributeError):
        config.colour = 1  # locked: a misspelt field cannot be added silently


def test_every_shipped_config_has_exactly_its_jobs_fields():
    schema = {"cpu_tiny": defaults.pretrain(), "cpu_mirrored": defaults.pretrain(), "jft_pretrain": defaults.pretrain(),
              "sweep_toy_pretrain": defaults.pretrain(), "finetune": defaults.finetune(),
              "evaluate": defaults.evaluate(), "sweep_toy": defaults.sweep(), "compare_toy": defaults.compare()}
    assert sorted(schema) == config_lib.shipped()
    for name, fields in schema.items():
        assert config_lib.check_fields(config_lib.load(name), fields) == [], name


def test_jft_recipe_matches_the_paper():
    config = config_lib.load("jft_pretrain:F3+", epochs=8.0)
    assert config.variant == "F3+" and config.epochs == 8.0
    assert (config.global_batch_size, config.image_size, config.eval_image_size) == (4096, 224, 256)
    assert (config.momentum, config.weight_decay, config.agc_clip) == (0.9, 1e-6, 0.01)
    assert config.base_learning_rate * config.global_batch_size / 256 == pytest.approx(1.6)
    assert config.crop and config.flip and config.label_smoothing == 0.0
    assert config_lib.load("jft_pretrain").variant == "F0"


def test_mirrored_cpu_config():
    config = config_lib.load("cpu_mirrored")
    assert config.strategy == "mirrored" and config.num_cpu_devices == 2 and config.variant == "tiny"


@pytest.mark.parametrize("spec, overrides, message", [
    ("cpu_tiny", {"colour": "red"}, "unknown config field 'colour'"),
    ("cpu_tiny", {"epochs": "lots"}, "'epochs' cannot take 'lots'"),
    ("cpu_tiny", {"jit_compile": "maybe"}, "'jit_compile' cannot take 'maybe'"),
    ("missing.py", {}, "does not exist"),
    ("no_such_config", {}, "shipped configs: compare_toy, cpu_mirrored, cpu_tiny"),
    ("sweep_toy:huge", {}, "takes no argument, 'smoke' or 'vit'"),
])
def test_bad_configs_name_the_problem(spec, overrides, message):
    with pytest.raises(ValueError, match=message):
        config_lib.load(spec, **overrides)


def test_every_bad_override_is_named_at_once():
    with pytest.raises(ValueError) as info:
        config_lib.load("cpu_tiny", colour="red", shape="round", epochs="lots")
    for needle in ("'colour'", "'shape'", "'epochs' cannot take"):
        assert needle in str(info.value)


def test_a_hand_made_config_is_checked_against_the_schema():
    config = ml_collections.ConfigDict(dict(defaults.pretrain().to_dict(), colour="red", epochs="2"))
    del config["seed"]
    problems = config_lib.check_fields(config, defaults.pretrain())
    assert any("unknown config field(s) ['colour']" in p for p in problems)
    assert any("lacks field(s) ['seed']" in p for p in problems)
    assert any("'epochs' must be float; got '2'" in p for p in problems)
    with pytest.raises(ValueError, match="bad pretraining config"):
        pretrain.validate(config)


def test_validate_collects_every_problem(tmp_path):
    bad = config_lib.override(defaults.pretrain(), dict(
        variant="F99", epochs=-1.0, global_batch_size=10, corpus=str(tmp_path), steps_per_execution=4,
        checkpoint_every_steps=10, strategy="gpu-cluster"))
    with pytest.raises(ValueError) as info:
        pretrain.validate(bad, num_replicas=4)
    text = str(info.value)
    for needle in ("unknown variant 'F99'", "epoch budget", "not divisible by the 4 replicas",
                   "unknown strategy 'gpu-cluster'", "checkpoint_every_steps=10 must be a multiple",
                   "is missing or not a corpus"):
        assert needle in text


def test_total_steps_follow_fractional_budgets():
    def config(**fields):
        return config_lib.override(defaults.pretrain(), fields)

    assert pretrain.total_steps(config(global_batch_size=4096, epochs=0.25), 4_000_000_000) == 244141
    assert pretrain.total_steps(config(global_batch_size=16, epochs=0.5, steps_per_execution=4), 100) == 4
    assert pretrain.total_steps(config(global_batch_size=16, epochs=1.0, steps_per_execution=4), 100) == 8


def test_resume_check():
    def saved(**fields):
        return config_lib.as_dict(config_lib.override(defaults.pretrain(), fields))

    base = saved(corpus="/a")
    config_lib.check_resume(base, saved(corpus="/moved", strategy="mirrored", steps_per_execution=2,
                                        checkpoint_every_steps=5), pretrain.RESUME_SAFE)
    with pytest.raises(ValueError, match=r"(?s)seed: 0 -> 1.*variant: 'S0' -> 'S1'"):
        config_lib.check_resume(base, saved(corpus="/a", variant="S1", seed=1), pretrain.RESUME_SAFE)
    # A run saved by an older release lacks the fields added since: they count as their defaults.
    older = {k: v for k, v in base.items() if k != "optimizer"}
    schema = config_lib.as_dict(defaults.pretrain())
    config_lib.check_resume(older, base, pretrain.RESUME_SAFE, schema)
    with pytest.raises(ValueError, match="optimizer: 'sgd' -> 'adamw'"):
        config_lib.check_resume(older, saved(corpus="/a", optimizer="adamw"), pretrain.RESUME_SAFE, schema)
