"""Preemption-safe checkpoints: each one is a directory written under a temporary name and renamed into place.

    <workdir>/checkpoints/ckpt-000000120/model.weights.h5   model weights + optimizer state (incl. iterations)
    <workdir>/checkpoints/ckpt-000000120/state.json         step, compute clock, anything else the run keeps

Keras' `.weights.h5` leaves out the state of the random generators (dropout, stochastic depth), so state.json
also holds them: a resumed run draws the same masks as an uninterrupted one.

A directory named `ckpt-<step>` is complete by construction (rename is atomic on POSIX), so a process killed at
any instant leaves either the previous set of checkpoints or the previous set plus one complete new one. Only the
last `keep` are kept. Resuming reads the step from `optimizer.iterations` (the step the optimizer has applied)
and checks it against state.json.
"""
import json
import logging
import os
import re
import shutil

import numpy as np

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"
_NAME = re.compile(r"^ckpt-(\d+)$")


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rng_variables(model):
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _fsync_file(path):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class CheckpointManager:
    """Writes, lists, prunes and restores checkpoints in `directory`.

    Args:
      directory: where checkpoints live (created if missing).
      keep: how many of the newest checkpoints to keep (>= 1).
      write: False on the non-chief workers of a multi-worker job (they read but never write).
    """

    def __init__(self, directory, keep=3, write=True):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1 (how many checkpoints to keep); got {keep!r}.")
        self.directory = directory
        self.keep = keep
        self.write = write
        if write:
            os.makedirs(directory, exist_ok=True)
            self._remove_partial()

    def _remove_partial(self):
        # Leftovers of a write that was killed before its rename.
        for name in os.listdir(self.directory):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def steps(self):
        """Steps of the complete checkpoints, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            m = _NAME.match(name)
            if m and os.path.exists(os.path.join(self.directory, name, STATE_FILE)):
                found.append(int(m.group(1)))
        return sorted(found)

    def path(self, step):
        return os.path.join(self.directory, f"ckpt-{step:09d}")

    def latest_step(self):
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, model, step, state):
        """Write checkpoint `step` (model + optimizer + `state` dict) atomically; prune old ones. Returns its path."""
        if not self.write:
            return None
        final = self.path(step)
        if os.path.exists(final):
            return final
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-ckpt-{step:09d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        weights = os.path.join(tmp, WEIGHTS_FILE)
        model.save_weights(weights)
        _fsync_file(weights)
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            # In model order: generator names depend on how many were created before in the process.
            rng = [np.asarray(v.numpy()).tolist() for v in _rng_variables(model)]
            json.dump(dict(state, step=int(step), rng=rng), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        self.prune()
        return final

    def prune(self):
        for step in self.steps()[:-self.keep]:
            shutil.rmtree(self.path(step), ignore_errors=True)

    def read_state(self, step):
        with open(os.path.join(self.path(step), STATE_FILE)) as f:
            return json.load(f)

    def restore(self, model, step=None):
        """Load checkpoint `step` (default: the newest) into a compiled model whose optimizer is built.

        Returns (step, state). The step is read back from `model.optimizer.iterations`.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        model.load_weights(os.path.join(self.path(step), WEIGHTS_FILE))
        state = self.read_state(step)
        rng, variables = state.get("rng", []), _rng_variables(model)
        if len(rng) != len(variables):
            raise ValueError(f"checkpoint {self.path(step)} holds {len(rng)} random generator states but the model "
                             f"has {len(variables)}; it was written by a different model.")
        for variable, value in zip(variables, rng):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        restored = int(model.optimizer.iterations.numpy())
        if restored != int(state["step"]):
            raise ValueError(f"checkpoint {self.path(step)} is inconsistent: optimizer.iterations={restored} but "
                             f"state.json says step {state['step']}.")
        log.info("restored %s (step %d)", self.path(step), restored)
        return restored, state
