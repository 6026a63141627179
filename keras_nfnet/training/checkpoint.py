"""Preemption-safe checkpoints: each one is a directory written under a temporary name and renamed into place.

    <workdir>/checkpoints/ckpt-000000120/model.weights.h5   model weights + optimizer state (incl. iterations)
    <workdir>/checkpoints/ckpt-000000120/state.json         step, compute clock, anything else the run keeps

Keras' `.weights.h5` leaves out the state of the random generators (dropout, stochastic depth), so state.json
also holds them: a resumed run draws the same masks as an uninterrupted one.

A directory named `ckpt-<step>` is complete by construction (rename is atomic on POSIX), so a process killed at
any instant leaves either the previous set of checkpoints or the previous set plus one complete new one. Only the
last `keep` are kept.

In a bucket (`gs://...`: no rename) a checkpoint is written in place, its files first and a small marker object,
`COMMITTED`, last (one object put is atomic); a `ckpt-<step>` without the marker is a write that was cut short:
readers ignore it, and the next writer removes it. Pruning deletes the marker first, so a half-deleted checkpoint
is never taken for a complete one. Setting a damaged checkpoint aside copies it to `damaged-ckpt-<step>` and then
deletes it (marker first). Resuming reads the step from `optimizer.iterations` (the step the optimizer has applied)
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

from keras_nfnet import storage

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"
COMMIT_FILE = "COMMITTED"  # written last into a remote checkpoint: it is complete
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


def _state_json(model, step, state):
    # In model order: generator names depend on how many were created before in the process.
    rng = [np.asarray(v.numpy()).tolist() for v in _rng_variables(model)]
    return json.dumps(dict(state, step=int(step), rng=rng), indent=1, sort_keys=True)


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
        self.remote = storage.is_remote(directory)
        if write:
            storage.makedirs(directory)
            self._remove_partial()

    def _remove_partial(self):
        # Leftovers of a write that was killed before its rename (local) or before its marker (remote).
        for name in storage.listdir(self.directory) if storage.isdir(self.directory) else []:
            if name.startswith(".tmp-") or (self.remote and _NAME.match(name) and not self._committed(name)):
                storage.rmtree(storage.join(self.directory, name))

    def _committed(self, name):
        """Whether checkpoint directory `name` is complete: renamed into place (local), marker written (remote)."""
        return storage.exists(storage.join(self.directory, name, COMMIT_FILE if self.remote else STATE_FILE))

    def _names(self):
        return storage.listdir(self.directory) if storage.isdir(self.directory) else []

    def steps(self):
        """Steps of the complete checkpoints, oldest first."""
        return sorted(int(m.group(1)) for name in self._names()
                      if (m := _NAME.match(name)) and self._committed(name))

    def path(self, step):
        return storage.join(self.directory, f"ckpt-{step:09d}")

    def latest_step(self):
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, model, step, state):
        """Write checkpoint `step` (model + optimizer + `state` dict) atomically; prune old ones. Returns its path."""
        if not self.write:
            return None
        final = self.path(step)
        if self.remote:
            return self._save_remote(model, step, state, final)
        if os.path.exists(final):
            return final
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-ckpt-{step:09d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        weights = os.path.join(tmp, WEIGHTS_FILE)
        model.save_weights(weights)
        _fsync_file(weights)
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            f.write(_state_json(model, step, state))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        self.prune()
        return final

    def _save_remote(self, model, step, state, final):
        if storage.exists(storage.join(final, COMMIT_FILE)):
            return final
        storage.rmtree(final)  # an uncommitted write of the same step
        with storage.staged_dir(final) as local:  # Keras writes .weights.h5 to a local file; uploaded on exit
            model.save_weights(os.path.join(local, WEIGHTS_FILE))
        storage.write_atomic(storage.join(final, STATE_FILE), _state_json(model, step, state))
        storage.write_atomic(storage.join(final, COMMIT_FILE), json.dumps({"step": int(step)}))
        self.prune()
        return final

    def _delete(self, path):
        if self.remote:  # the marker first: a half-deleted checkpoint must not look complete
            marker = storage.join(path, COMMIT_FILE)
            if storage.exists(marker):
                storage.remove(marker)
        storage.rmtree(path)

    def prune(self):
        for step in self.steps()[:-self.keep]:
            self._delete(self.path(step))

    def read_state(self, step):
        return json.loads(storage.read_text(storage.join(self.path(step), STATE_FILE)))

    def all_steps(self):
        """Steps of every directory named ckpt-<step>, newest first: complete or not locally (a damaged one is
        reported); in a bucket only committed ones (an uncommitted one is a write in progress or cut short)."""
        return sorted((int(m.group(1)) for name in self._names()
                       if (m := _NAME.match(name)) and (not self.remote or self._committed(name))), reverse=True)

    def _load(self, model, step):
        """Load checkpoint `step` into `model`; _Damaged(reason) when it cannot be used."""
        path = self.path(step)
        for name in (WEIGHTS_FILE, STATE_FILE):
            if not storage.exists(storage.join(path, name)) or storage.isdir(storage.join(path, name)):
                raise _Damaged(f"{name} is missing")
        try:
            state = self.read_state(step)
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise ValueError("it holds no step")
        except (OSError, ValueError) as err:
            raise _Damaged(f"{STATE_FILE} is unreadable ({err})") from None
        try:
            # h5py needs a local file: a remote one is copied first
            model.load_weights(storage.fetch_file(storage.join(path, WEIGHTS_FILE)))
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
        target = storage.join(self.directory, DAMAGED_PREFIX + storage.basename(self.path(step)))
        candidate, n = target, 1
        while storage.exists(candidate):
            candidate, n = f"{target}-{n}", n + 1
        if self.remote:
            source = self.path(step)
            for name in storage.listdir(source):
                if name != COMMIT_FILE:
                    storage.write_bytes(storage.join(candidate, name), storage.read_bytes(storage.join(source, name)))
            self._delete(source)
            return candidate
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
