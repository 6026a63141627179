"""Fine-tuning checkpoints and resume (the pretraining job's mechanism, keras_nfnet.jobs.context): a run stopped
part-way and resumed ends bitwise equal to an uninterrupted one, a finished run is not trained again, and a resume
with a config that changes the result is refused."""
import os

import keras
import numpy as np
import pytest

from keras_nfnet import cli
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.jobs import context
from keras_nfnet.jobs import finetune as ft
from keras_nfnet.jobs import sources
from keras_nfnet.training.checkpoint import CheckpointManager
from tests.test_finetune import _corpus, _pretrain_workdir


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run of 6 steps (2 epochs of 24 images at batch 8) with everything that keeps state across
    steps: SAM + AGC + EMA, dropout and stochastic depth (random generators), Inception crop, repeated
    augmentation, MixUp/CutMix and RandAugment (keyed by the data position)."""
    base = tmp_path_factory.mktemp("ft_resume")
    source, _ = _pretrain_workdir(base / "pre")
    config = config_lib.load("finetune", source=source, corpus=_corpus(base / "c", n_train=24, n_test=6),
                             image_size=32, eval_image_size=32, epochs=2.0, global_batch_size=8, warmup_epochs=0.5,
                             agc_clip=0.04, sam_rho=0.05, ema=True, ema_max_decay=0.9, repeats=2, mixup_cutmix=True,
                             randaugment_layers=1, checkpoint_every_steps=3, verbose=0)
    workdir = str(base / "whole")
    return config, workdir, ft.finetune(config, workdir)


def _weights(path):
    return [w.numpy() for w in keras.saving.load_model(path, compile=False).weights]


def test_a_stopped_run_resumes_to_the_uninterrupted_weights(whole, tmp_path, capsys):
    config, whole_dir, result = whole
    assert result["status"] == "done" and result["step"] == result["total_steps"] == 6
    workdir = str(tmp_path / "ft")
    # Stopped mid-epoch (epochs are 3 steps), off the checkpoint interval: the schedule stays the 6-step one, and
    # the end of the run is checkpointed (with the raw weights, not the EMA ones fit ends with).
    stopped = ft.finetune(config_lib.override(config, {"max_steps": 4}), workdir)
    assert (stopped["status"], stopped["step"], stopped["total_steps"]) == ("stopped", 4, 6)
    assert not os.path.exists(os.path.join(workdir, context.RESULT_FILE))
    assert CheckpointManager(os.path.join(workdir, context.CHECKPOINT_DIR), write=False).steps() == [3, 4]
    with pytest.raises(ValueError, match="fine-tuning run that has not finished"):
        sources.load_model(workdir)  # its checkpoints are for resuming, not a model to evaluate or export

    resumed = ft.finetune(config, workdir)  # max_steps is resume-safe
    assert "Resuming from step 4 of 6" in capsys.readouterr().out
    assert (resumed["status"], resumed["step"]) == ("done", 6)
    # Raw weights (model, optimizer, random generators, data position) and weight averages alike, bit for bit.
    assert resumed["metrics"]["weights_sha256"] == result["metrics"]["weights_sha256"]
    for a, b in zip(_weights(os.path.join(workdir, "model_ema.keras")), _weights(os.path.join(whole_dir,
                                                                                          "model_ema.keras"))):
        np.testing.assert_array_equal(a, b)
    for key in ("top1", "top5", "top1_ema", "top5_ema", "eval_loss"):
        assert resumed["metrics"][key] == result["metrics"][key]


def test_a_finished_run_is_not_trained_again(whole, capsys):
    config, workdir, result = whole
    model_file = os.path.join(workdir, "model.keras")
    before = (os.path.getmtime(model_file), sorted(os.listdir(os.path.join(workdir, context.CHECKPOINT_DIR))))
    assert ft.finetune(config, workdir) == result
    assert "not training again" in capsys.readouterr().out
    assert (os.path.getmtime(model_file), sorted(os.listdir(os.path.join(workdir, context.CHECKPOINT_DIR)))) == before


def test_a_resume_that_changes_the_result_is_refused(whole):
    config, workdir, _ = whole
    with pytest.raises(ValueError, match="different config") as error:
        ft.finetune(config_lib.override(config, {"base_learning_rate": 0.2, "keep_checkpoints": 5}), workdir)
    line = cli.one_line(error.value)  # what the command prints
    assert "\n" not in line and "base_learning_rate: 0.1 -> 0.2" in line and "keep_checkpoints:" not in line
