"""Kill test: a consumer of the pipeline with periodic step checkpoints is SIGKILLed at random moments and
restarted; the reconstructed stream must show every epoch exactly once and identical batches for re-run steps.
A negative control (a plain shuffle-buffer TFRecordDataset resumed by epoch, like Keras' BackupAndRestore) runs
through the same kills and the same checker, and must fail it.

This file is also the consumer: `python tests/test_data_kill.py MODE CORPUS WORKDIR EPOCHS`.
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

BATCH, SIZE, CKPT_EVERY = 4, 16, 2


def _atomic_write(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def _consume(mode, corpus_dir, workdir, epochs):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow as tf

    from keras_nfnet.data import corpus
    from keras_nfnet.data.pipeline import train_dataset

    n = corpus.load_metadata(corpus_dir).split("train").num_examples
    ckpt_path = os.path.join(workdir, "ckpt.json")
    ckpt = json.load(open(ckpt_path)) if os.path.exists(ckpt_path) else {"step": 0, "epoch": 0, "history": []}
    executed = open(os.path.join(workdir, "executed.jsonl"), "a")
    history, step = ckpt["history"], ckpt["step"]
    if mode == "exact":
        total_steps = epochs * n // BATCH
        stream = iter(train_dataset(corpus_dir, "train", BATCH, SIZE, seed=13, start_step=step, with_info=True,
                                    mixup_cutmix=True))
        batches = ((x, info["id"]) for x, _, info in stream)
    else:
        # Negative control: shuffle buffer, resumed at the start of the checkpointed epoch (weights keep the
        # updates from the part of the epoch seen before the kill, as with BackupAndRestore).
        total_steps = None
        files = corpus.load_metadata(corpus_dir).split("train").shard_paths(corpus_dir)
        spec = corpus.feature_spec()

        def epoch_batches():
            for epoch in range(ckpt["epoch"], epochs):
                ds = tf.data.TFRecordDataset(files).shuffle(16).map(lambda r: tf.io.parse_single_example(r, spec))
                for b in ds.batch(BATCH, drop_remainder=True):
                    yield epoch, b

        gen = epoch_batches()
        batches = ((b["image/encoded"], b["image/id"], epoch) for epoch, b in gen)
    while total_steps is None or step < total_steps:
        try:
            item = next(batches)
        except StopIteration:
            break
        x, ids = item[0], [int(v) for v in item[1].numpy()]
        digest = hashlib.sha1(x.numpy().tobytes()).hexdigest()
        executed.write(json.dumps({"step": step, "ids": ids, "hash": digest}) + "\n")
        executed.flush()
        history.append([step, ids, digest])
        step += 1
        time.sleep(0.05)
        if step % CKPT_EVERY == 0:
            _atomic_write(ckpt_path, {"step": step, "epoch": item[2] if len(item) > 2 else 0, "history": history})
    _atomic_write(ckpt_path, {"step": step, "epoch": epochs, "history": history, "done": True})


def _run_with_kills(mode, corpus_dir, workdir, epochs, kills, rng):
    os.makedirs(workdir, exist_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), mode, corpus_dir, workdir, str(epochs)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    executed = os.path.join(workdir, "executed.jsonl")
    killed = 0
    while True:
        lines_before = _count_lines(executed)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if killed < kills:
            # wait until this run has consumed 1-3 new batches, then kill it at a random moment soon after
            wanted = lines_before + rng.randint(1, 3)
            deadline = time.time() + 120
            while _count_lines(executed) < wanted and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.15))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
                continue
        # the run was not killed: it must end on its own (a run that finished early ends the kills too)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
        return killed


def _count_lines(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def check_stream(workdir, n, epochs):
    """Returns a list of violations of exactly-once and identical re-runs (empty = the stream is correct)."""
    problems = []
    ckpt = json.load(open(os.path.join(workdir, "ckpt.json")))
    history = ckpt["history"]
    steps = [h[0] for h in history]
    if steps != list(range(len(steps))):
        problems.append(f"the effective stream has gaps or replays: steps {steps[:12]}...")
    ids = [i for h in history for i in h[1]]
    if len(ids) != n * epochs:
        problems.append(f"{len(ids)} examples trained on, expected {n * epochs}")
    for e in range(epochs):
        counts = np.bincount(ids[e * n:(e + 1) * n], minlength=n)
        if not np.all(counts == 1):
            problems.append(f"epoch {e}: per-example counts range {counts.min()}..{counts.max()}, expected all 1")
    seen = {}
    with open(os.path.join(workdir, "executed.jsonl")) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the line being written when the process was killed
                continue
            key = (tuple(rec["ids"]), rec["hash"])
            if seen.setdefault(rec["step"], key) != key:
                problems.append(f"step {rec['step']} differs when re-run")
    return problems


def test_sigkill_restarts_keep_exactly_once_and_identical_reruns_and_control_fails(tmp_path):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from keras_nfnet.data.synthetic import make_synthetic_corpus

    n, epochs = 32, 3
    corpus_dir = str(tmp_path / "corpus")
    make_synthetic_corpus(corpus_dir, num_images=n, num_classes=4, image_size=16, examples_per_shard=10)
    rng = random.Random(1234)

    exact = str(tmp_path / "exact")
    assert _run_with_kills("exact", corpus_dir, exact, epochs, kills=3, rng=rng) == 3
    reruns = _count_lines(os.path.join(exact, "executed.jsonl")) - epochs * n // BATCH
    assert reruns > 0, "no step was re-run: the kills did not interrupt between checkpoints"
    assert check_stream(exact, n, epochs) == []

    control = str(tmp_path / "control")
    assert _run_with_kills("control", corpus_dir, control, epochs, kills=2, rng=rng) == 2
    problems = check_stream(control, n, epochs)
    assert problems, "the checker accepted a shuffle-buffer pipeline resumed by epoch: it cannot fail"
    assert any("counts" in p or "examples trained on" in p for p in problems)


if __name__ == "__main__":
    _consume(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
