"""The pretrain command killed with SIGKILL at random steps and re-run ends exactly where an uninterrupted run
ends, and consumes each epoch's examples once, even though the newest checkpoint is truncated after each kill
(the re-run reports it, keeps it aside and resumes from the previous one).

Evidence for "each epoch's examples seen once": (1) every re-run resumes at the step of the newest complete
checkpoint on disk (nothing replayed, nothing skipped: the step is read back from optimizer.iterations and the
input stream is rebuilt at that position); (2) the stream the trainer reads, steps [0, T), holds every training
example exactly once per epoch (read back from the real pipeline with its example ids); (3) the final weights are
bitwise equal to the uninterrupted run's, which SGD with momentum only gives if the same batches were applied in
the same order.
"""
import os
import random
import re
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, HOLDOUT, BATCH, EPOCHS = 64, 16, 16, 3
TOTAL = TRAIN * EPOCHS // BATCH  # 12 steps


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from keras_nfnet.data.synthetic import make_synthetic_corpus

    path = str(tmp_path_factory.mktemp("corpus"))
    make_synthetic_corpus(path, num_images=TRAIN, num_classes=10, image_size=32, num_holdout=HOLDOUT, seed=1,
                          multi_label=False, examples_per_shard=32)
    return path


def _launch(corpus, workdir):
    overrides = (f"corpus={corpus},epochs={EPOCHS},global_batch_size={BATCH},checkpoint_every_steps=1,"
                 f"keep_checkpoints=2,eval_every_steps=1000,log_every_steps=2,peak_flops_per_device=1e11,verbose=0")
    cmd = [sys.executable, os.path.join(ROOT, "trainers", "pretrain.py"),
           "--config=cpu_tiny", *[f"--config.{kv}" for kv in overrides.split(",")], "--workdir", workdir]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _checkpoint_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(m.group(1)) for m in (re.match(r"ckpt-(\d+)$", n) for n in os.listdir(directory)) if m)


def _aside(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return [n for n in os.listdir(directory) if n.startswith("damaged-")] if os.path.isdir(directory) else []


def _weights(workdir, step):
    path = os.path.join(workdir, "checkpoints", f"ckpt-{step:09d}", "model.weights.h5")
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_sigkill_at_random_steps_then_resume_matches_uninterrupted_run(corpus, tmp_path, processes):
    rng = random.Random(1234)
    reference_dir, killed_dir = str(tmp_path / "reference"), str(tmp_path / "killed")
    reference = _launch(corpus, reference_dir)
    processes.append(reference)

    resumes = []  # (newest intact checkpoint on disk at launch, step the run said it resumed from)
    kills, truncated = 0, []

    def damage_newest():
        """Truncate the newest checkpoint when an older one exists; returns (intact steps, truncated step)."""
        steps = _checkpoint_steps(killed_dir)
        if len(steps) < 2:
            return steps, None
        weights = os.path.join(killed_dir, "checkpoints", f"ckpt-{steps[-1]:09d}", "model.weights.h5")
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) // 3)
        truncated.append(steps[-1])
        return steps[:-1], steps[-1]

    def check_reported(output, damaged):
        if damaged is not None:
            assert re.search(rf"checkpoint \S+ckpt-{damaged:09d} is damaged \(model.weights.h5 does not load.*kept "
                             rf"aside as \S+damaged-ckpt-{damaged:09d}", output), output[-3000:]

    while kills < 3:
        before, damaged = damage_newest()
        last = before[-1] if before else 0
        if last >= TOTAL - 1:
            break
        target = rng.randint(last + 1, TOTAL - 1)
        aside_before = len(_aside(killed_dir))
        proc = _launch(corpus, killed_dir)
        processes.append(proc)
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            steps = _checkpoint_steps(killed_dir)  # the damaged one counts once the run has set it aside
            if steps and steps[-1] >= target and (damaged is None or len(_aside(killed_dir)) > aside_before):
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.15))  # land anywhere: mid-step, mid-checkpoint-write
        proc.kill()
        output = proc.communicate()[0]
        assert proc.returncode == -9, f"run was not killed by SIGKILL (rc {proc.returncode}):\n{output[-3000:]}"
        kills += 1
        match = re.search(r"Resuming from step (\d+)", output)
        resumes.append((last if before else None, int(match.group(1)) if match else None))
        if match:
            check_reported(output, damaged)

    before, damaged = damage_newest()
    final = _launch(corpus, killed_dir)
    processes.append(final)
    output = final.communicate(timeout=300)[0]
    assert final.returncode == 0, output[-3000:]
    check_reported(output, damaged)
    match = re.search(r"Resuming from step (\d+)", output)
    resumes.append((before[-1] if before else None, int(match.group(1)) if match else None))
    ref_output = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, ref_output[-3000:]
    assert "Resuming" not in ref_output

    assert kills == 3 and truncated, "no checkpoint was truncated"
    aside = _aside(killed_dir)
    assert len(aside) == len(truncated) and all(n.startswith("damaged-ckpt-") for n in aside)  # kept, not deleted
    for on_disk, resumed_at in resumes:
        assert resumed_at == on_disk, f"a re-run resumed at {resumed_at}, newest checkpoint was {on_disk}"
    assert sum(1 for on_disk, _ in resumes if on_disk) >= 2, f"kills landed before any checkpoint: {resumes}"

    # Only the last keep_checkpoints=2 are kept, and both runs end at the budget's last step.
    assert _checkpoint_steps(killed_dir) == [TOTAL - 1, TOTAL]
    want, got = _weights(reference_dir, TOTAL), _weights(killed_dir, TOTAL)
    assert sorted(want) == sorted(got) and len(want) > 10
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert int(got["optimizer/inner_optimizer/vars/0"]) == TOTAL  # optimizer.iterations: no step lost or repeated

    # The stream the trainer consumed, steps [0, TOTAL), holds each example exactly once per epoch.
    import tensorflow as tf
    from keras_nfnet.data.pipeline import train_dataset

    ds = train_dataset(corpus, "train", BATCH, 32, seed=0, start_step=0, with_info=True)
    ids = np.concatenate([info["id"].numpy() for _, _, info in ds.take(TOTAL)])
    all_ids = np.arange(TRAIN)
    for epoch in range(EPOCHS):
        np.testing.assert_array_equal(np.sort(ids[epoch * TRAIN:(epoch + 1) * TRAIN]), all_ids)
    assert not np.array_equal(ids[:TRAIN], ids[TRAIN:2 * TRAIN])  # reshuffled each epoch
    del tf
