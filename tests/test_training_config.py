"""Run configs: file + overrides, type parsing, errors naming the bad field, the resume compatibility check,
epoch budgets -> steps, and the paper configs against NFNET_SPEC.md."""
import os

import pytest

from keras_nfnet.training import config as config_lib
from keras_nfnet.training.config import PretrainConfig, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "trainers", "configs")


def test_file_with_inline_and_flag_overrides():
    config = load_config(f"{CONFIGS}/cpu_tiny.py:variant=S1,epochs=0.25,jit_compile=true",
                         ["global_batch_size=32", "seed=7"])
    assert (config.variant, config.epochs, config.jit_compile, config.global_batch_size, config.seed) == \
        ("S1", 0.25, True, 32, 7)
    assert config.image_size == 32  # from the file


def test_jft_recipe_matches_the_paper():
    config = load_config(f"{CONFIGS}/jft_pretrain.py:variant=F3+,epochs=8")
    assert config.variant == "F3+" and config.epochs == 8.0
    assert (config.global_batch_size, config.image_size, config.eval_image_size) == (4096, 224, 256)
    assert (config.momentum, config.weight_decay, config.agc_clip) == (0.9, 1e-6, 0.01)
    assert config.base_learning_rate * config.global_batch_size / 256 == pytest.approx(1.6)
    assert config.crop and config.flip and config.label_smoothing == 0.0


def test_mirrored_cpu_config():
    config = load_config(f"{CONFIGS}/cpu_mirrored.py")
    assert config.strategy == "mirrored" and config.num_cpu_devices == 2


@pytest.mark.parametrize("spec, message", [
    ("cpu_tiny.py:colour=red", "unknown config field"),
    ("cpu_tiny.py:epochs=lots", "'epochs' must be float"),
    ("cpu_tiny.py:jit_compile=maybe", "bool"),
    ("cpu_tiny.py:epochs", "key=value"),
    ("missing.py", "does not exist"),
])
def test_bad_overrides_name_the_problem(spec, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_config(os.path.join(CONFIGS, spec))


def test_validate_collects_every_problem(tmp_path):
    bad = PretrainConfig(variant="F99", epochs=-1.0, global_batch_size=10, corpus=str(tmp_path),
                         steps_per_execution=4, checkpoint_every_steps=10, strategy="gpu-cluster")
    with pytest.raises(ValueError) as info:
        config_lib.validate(bad, num_replicas=4)
    text = str(info.value)
    for needle in ("unknown variant 'F99'", "epoch budget", "not divisible by the 4 replicas",
                   "unknown strategy 'gpu-cluster'", "checkpoint_every_steps=10 must be a multiple",
                   "is missing or not a corpus"):
        assert needle in text


def test_total_steps_follow_fractional_budgets():
    config = PretrainConfig(global_batch_size=4096, epochs=0.25)
    assert config_lib.total_steps(config, 4_000_000_000) == 244141  # ceil(0.25 * 4e9 / 4096)
    config = PretrainConfig(global_batch_size=16, epochs=0.5, steps_per_execution=4)
    assert config_lib.total_steps(config, 100) == 4  # ceil(3.125) = 4, already a multiple of 4
    config = PretrainConfig(global_batch_size=16, epochs=1.0, steps_per_execution=4)
    assert config_lib.total_steps(config, 100) == 8  # ceil(6.25) = 7 -> 8


def test_resume_check():
    saved = PretrainConfig(corpus="/a").to_dict()
    config_lib.check_resume(saved, PretrainConfig(corpus="/moved", strategy="mirrored", steps_per_execution=2,
                                                  checkpoint_every_steps=5).to_dict())
    with pytest.raises(ValueError, match=r"(?s)seed: 0 -> 1.*variant: 'S0' -> 'S1'"):
        config_lib.check_resume(saved, PretrainConfig(corpus="/a", variant="S1", seed=1).to_dict())
