"""Strategy from a flag: the kinds, clear errors, global -> per-replica batch, precision by device."""
import json

import pytest
import tensorflow as tf

from keras_nfnet.training import strategy as strategy_lib


def test_default_and_mirrored_over_logical_cpus():
    assert strategy_lib.make_strategy("default") is tf.distribute.get_strategy()
    mirrored = strategy_lib.make_strategy("mirrored", num_cpu_devices=2)
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2
    assert strategy_lib.device_kind(mirrored) == "cpu"
    assert strategy_lib.is_chief(mirrored)


def test_more_cpu_devices_than_configured_is_a_clear_error():
    with pytest.raises(ValueError, match="num_cpu_devices=3 needs 3 logical CPU devices"):
        strategy_lib.make_strategy("mirrored", num_cpu_devices=3)


def test_unknown_kind_and_missing_tf_config(monkeypatch):
    with pytest.raises(ValueError, match="Unknown strategy 'gpus'; accepted: default, mirrored, multiworker, tpu"):
        strategy_lib.make_strategy("gpus")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        strategy_lib.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 5}}))
    with pytest.raises(ValueError, match="does not name a worker"):
        strategy_lib.make_strategy("multiworker")


def test_per_replica_batch_and_precision():
    mirrored = strategy_lib.make_strategy("mirrored", num_cpu_devices=2)
    assert strategy_lib.per_replica_batch_size(64, mirrored) == 32
    with pytest.raises(ValueError, match="not divisible by the 2 replicas"):
        strategy_lib.per_replica_batch_size(63, mirrored)
    assert strategy_lib.resolve_precision("auto", mirrored) == "float32"  # bf16 is slower than fp32 on CPUs
    assert strategy_lib.resolve_precision("mixed_bfloat16", mirrored) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="Unknown precision"):
        strategy_lib.resolve_precision("fp8", mirrored)
