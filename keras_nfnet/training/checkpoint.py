"""Preemption-safe checkpoints: each one is a directory written under a temporary name and renamed into place.

    <workdir>/checkpoints/ckpt-000000120/model.weights.h5   model weights + optimizer state (incl. iterations)
    <workdir>/checkpoints/ckpt-000000120/state.json         step, compute clock, anything else the run keeps

Keras' `.weights.h5` leaves out the state of the random generators (dropout, stochastic depth), so state.json
also holds them: a resumed run draws the same masks as an uninterrupted one.

A directory named `ckpt-<step>` is complete by construction (rename is atomic on POSIX), so a process killed at
any instant leaves either the previous set of checkpoints or the previous set plus one complete new one. Only the
last `keep` are kept. Resuming reads the step from `optimizer.iterations` (the step the optimizer has applied)
and checks it against state.json.

A checkpoint that fails to load (weights file truncated or corrupt, state.json missing or unreadable, a step that
disagrees with the optimizer's) is reported and renamed `damaged-ckpt-<step>` (kept, never pruned, invisible to
later runs), and the next older one is tried: the run resumes from the newest intact checkpoint. When none is
intact, nothing is renamed and `restore` raises DamagedCheckpointsError listing each one and why: starting again
from step 0 is left to the user (move them away), since a cause that damages every checkpoint at once (a
different h5py or Keras, a full disk) would otherwise throw a whole run's progress away without anyone deciding to.
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
DAMAGED_PREFIX = "damaged-"
_NAME = re.compile(r"^ckpt-(\d+)$")


class DamagedCheckpointsError(ValueError):
    """Every checkpoint of a work directory failed to load; the message lists each one and why."""


class _Damaged(Exception):
    pass


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

    def all_steps(self):
        """Steps of every directory named ckpt-<step>, complete or not, newest first."""
        if not os.path.isdir(self.directory):
            return []
        return sorted((int(m.group(1)) for m in map(_NAME.match, os.listdir(self.directory)) if m), reverse=True)

    def _load(self, model, step):
        """Load checkpoint `step` into `model`; _Damaged(reason) when it cannot be used."""
        path = self.path(step)
        for name in (WEIGHTS_FILE, STATE_FILE):
            if not os.path.isfile(os.path.join(path, name)):
                raise _Damaged(f"{name} is missing")
        try:
            state = self.read_state(step)
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise ValueError("it holds no step")
        except (OSError, ValueError) as err:
            raise _Damaged(f"{STATE_FILE} is unreadable ({err})") from None
        try:
            model.load_weights(os.path.join(path, WEIGHTS_FILE))
        except Exception as err:  # noqa: BLE001 - h5py/Keras raise many kinds for a damaged file
            raise _Damaged(f"{WEIGHTS_FILE} does not load ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from None
        rng, variables = state.get("rng", []), _rng_variables(model)
        if len(rng) != len(variables):
            raise _Damaged(f"it holds {len(rng)} random generator states but the model has {len(variables)} (written "
                           "by a different model)")
        for variable, value in zip(variables, rng):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        restored = int(model.optimizer.iterations.numpy())
        if restored != int(state["step"]):
            raise _Damaged(f"it is inconsistent: optimizer.iterations={restored} but {STATE_FILE} says step "
                           f"{state['step']}")
        return restored, state

    def set_aside(self, step):
        """Rename checkpoint `step` to damaged-ckpt-<step>[-N] (kept, never pruned); returns the new path."""
        target = os.path.join(self.directory, DAMAGED_PREFIX + os.path.basename(self.path(step)))
        candidate, n = target, 1
        while os.path.exists(candidate):
            candidate, n = f"{target}-{n}", n + 1
        os.rename(self.path(step), candidate)
        _fsync_dir(self.directory)
        return candidate

    def restore(self, model, step=None, report=print):
        """Load the newest intact checkpoint (or checkpoint `step`) into a compiled model whose optimizer is built.

        Returns (step, state); the step is read back from `model.optimizer.iterations`. Damaged newer checkpoints
        are reported through `report` and set aside (by the writing process only). FileNotFoundError when there is
        no checkpoint, DamagedCheckpointsError when none loads.
        """
        steps = [step] if step is not None else self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        damaged = []
        for candidate in steps:
            try:
                restored, state = self._load(model, candidate)
            except _Damaged as err:
                damaged.append((candidate, str(err)))
                continue
            for bad, why in damaged:
                where = self.set_aside(bad) if self.write else self.path(bad)
                report(f"checkpoint {self.path(bad)} is damaged ({why}); "
                       f"{'kept aside as ' + where if self.write else 'skipped'}; resuming from step {restored}")
            log.info("restored %s (step %d)", self.path(candidate), restored)
            return restored, state
        raise DamagedCheckpointsError(
            f"no intact checkpoint in {self.directory}: " + "; ".join(
                f"ckpt-{bad:09d}: {why}" for bad, why in damaged) +
            ". They were left in place; move them away (or use a new workdir) to start again from step 0")
