"""Turns a pretraining run's directory into a row of the sweep's table of runs.

The pretraining job (`keras_nfnet.jobs.pretrain`) leaves in its workdir:
    config.json   the config the run started with
    result.json   written when the epoch budget is done (keras_nfnet.jobs.context): step, total_steps, and in
                  metrics heldout_loss, flops, device_hours
    checkpoints/ckpt-<step>/state.json   the compute clock at each checkpoint
A run that diverged (the job exits with status 3 and writes no result.json) is marked by the sweep with
`diverged.json`, so the learning-rate search counts it as tried without re-running it.
"""
import json
import os

from keras_nfnet import storage
from keras_nfnet.scaling.results import RunResult

RESULT_FILE = "result.json"
DIVERGED_FILE = "diverged.json"
CONFIG_FILE = "config.json"


def is_finished(run_dir: str) -> bool:
    return storage.exists(storage.join(run_dir, RESULT_FILE)) or storage.exists(storage.join(run_dir, DIVERGED_FILE))


def mark_diverged(run_dir: str, message: str) -> None:
    """Records that the run diverged, with the compute it had spent by its last checkpoint."""
    state = _latest_checkpoint_state(run_dir)
    compute = state.get("compute", {})
    row = {"message": message.strip()[-2000:], "step": state.get("step", 0),
           "flops": float(compute.get("flops", 0.0)), "device_hours": float(compute.get("device_seconds", 0.0)) / 3600}
    storage.write_atomic(storage.join(run_dir, DIVERGED_FILE), json.dumps(row, indent=1))


def collect_run(run, spec=None) -> RunResult:
    """The results row of a finished (or diverged) planned run; `run` is a `sweep.PlannedRun`."""
    return read_run_dir(run.run_dir, run_id=run.run_id, learning_rate=run.learning_rate)


def read_run_dir(run_dir: str, run_id: str = None, learning_rate: float = None) -> RunResult:
    """The results row of one pretraining workdir. `learning_rate` defaults to the config's base_learning_rate."""
    from keras_nfnet.data.corpus import load_metadata
    from keras_nfnet.architectures import count_macs, count_params, get_row

    config = _read_json(storage.join(run_dir, CONFIG_FILE), "the run's config (written when it started)")
    diverged_path = storage.join(run_dir, DIVERGED_FILE)
    if storage.exists(diverged_path):
        summary, status = _read_json(diverged_path, "the divergence marker"), "diverged"
        summary["heldout_loss"] = None
    else:
        result = _read_json(storage.join(run_dir, RESULT_FILE), "the run's result (written when its budget is done)")
        summary, status = dict(result["metrics"], step=result["step"]), "finished"
    info = load_metadata(config["corpus"])
    image_size = config.get("image_size") or get_row(config["variant"]).train_image_size
    return RunResult(
        run_id=run_id or storage.basename(run_dir.rstrip("/") if storage.is_remote(run_dir) else os.path.normpath(run_dir)),
        variant=config["variant"],
        params=count_params(config["variant"], num_classes=info.num_classes),
        macs_per_image=count_macs(config["variant"], image_size, num_classes=info.num_classes),
        epochs=float(config["epochs"]),
        learning_rate=float(learning_rate if learning_rate is not None else config["base_learning_rate"]),
        steps=int(summary.get("step", 0)),
        batch_size=int(config["global_batch_size"]),
        heldout_loss=summary["heldout_loss"],
        flops=float(summary["flops"]),
        device_hours=float(summary["device_hours"]),
        image_size=int(image_size),
        seed=int(config.get("seed", 0)),
        run_dir=storage.abspath(run_dir),
        status=status,
    )


def _read_json(path, what):
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} is missing ({what}); was this directory made by the pretraining job "
                                f"(keras_nfnet.jobs.pretrain), and did the run finish?")
    return json.loads(storage.read_text(path))


def _latest_checkpoint_state(run_dir):
    states = storage.glob(storage.join(run_dir, "checkpoints", "ckpt-*", "state.json"))
    if not states:
        return {}
    return json.loads(storage.read_text(states[-1]))
