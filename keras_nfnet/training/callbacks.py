"""Keras callbacks of a pretraining run. They all key on the global optimizer step, so they behave the same
whether a run started at step 0 or resumed, and whatever Keras' "epoch" length is.

Order them as `pretrain` does: DivergenceGuard first (a NaN/inf loss stops the run before anything is saved),
then StopAtStep, Checkpointing, TrainingScalars, HeldOutLoss.
"""
import logging
import math
import signal
import time

import keras
import numpy as np
import tensorflow as tf

from keras_nfnet import storage

log = logging.getLogger(__name__)


class SummaryWriter:
    """A `tf.summary` file writer for a local or remote log directory. TensorFlow's own gs:// filesystem cannot be
    pointed at another endpoint (an emulator, a proxy) and needs TensorFlow's cloud build, so events are written
    to a local staging directory and uploaded on every `flush()` (the callbacks flush at each log interval) and
    on `close()`. A local directory is written in place, as by `tf.summary.create_file_writer`."""

    def __init__(self, logdir):
        self.logdir = logdir
        self._stage = storage.staged_dir(logdir)
        self._writer = tf.summary.create_file_writer(self._stage.__enter__())

    def as_default(self, step=None):
        return self._writer.as_default(step=step)

    def flush(self):
        self._writer.flush()
        self._stage.sync()

    def close(self):
        if self._stage is not None:
            self._writer.close()
            stage, self._stage = self._stage, None
            stage.__exit__(None, None, None)


def global_step(model):
    return int(model.optimizer.iterations.numpy())


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stops the run at the first non-finite loss; `diverged` then holds (step, loss). Nothing is saved after it,
    so the last checkpoint is the last good state."""

    def __init__(self):
        super().__init__()
        self.diverged = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = (global_step(self.model), float(loss))
            self.model.stop_training = True

    def weights_finite(self):
        """Checked before every save: an update can make the weights non-finite one step before the loss is."""
        if self.diverged is not None:
            return False
        for variable in self.model.trainable_variables:
            if not np.all(np.isfinite(variable.numpy())):
                self.diverged = (global_step(self.model), f"non-finite weights in {variable.path}")
                self.model.stop_training = True
                return False
        return True


class PreemptionSignal:
    """Turns SIGTERM into a flag that `Checkpointing` checks after each step (save, then stop cleanly).

    Under a multi-worker strategy the signal reaches one worker, while its peers would go on into the next step's
    collectives and wait there forever. `agree()` therefore sums the local flags over all workers (one scalar
    all-reduce, made by every worker after every step group, in the same order), so every worker learns of it after
    the same step, saves that step and stops. TensorFlow's PreemptionCheckpointHandler does the same agreement
    through the coordination service, but it saves and restores its own tf.train.Checkpoint and ends the process
    itself, while a run's checkpoints here are Keras weights plus state.json (random generators, compute clock,
    skipped records) written atomically, and the job must finish its own bookkeeping (logs, exit status 143).
    """

    def __init__(self, signals=(signal.SIGTERM,), strategy=None):
        self.received = None
        self.stop_at = None  # the step every worker agreed to stop after
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        self._sum = None
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            @tf.function
            def total(flag):
                per_replica = strategy.run(lambda f: tf.identity(f), args=(flag,))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._sum = total

    def _handle(self, signum, frame):
        self.received = signum

    def agree(self):
        """True when any worker has received the signal (on every worker alike)."""
        local = self.received is not None
        if self._sum is None:
            return local
        return float(self._sum(tf.constant(1.0 if local else 0.0))) > 0

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StopAtStep(keras.callbacks.Callback):
    """Ends `model.fit` exactly at `last_step` (the budget's end, or an early `max_steps`)."""

    def __init__(self, last_step):
        super().__init__()
        self.last_step = last_step

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) >= self.last_step:
            self.model.stop_training = True


class Checkpointing(keras.callbacks.Callback):
    """Saves every `every` steps, on SIGTERM (then stops) and at the end of the last epoch, unless the run
    diverged.

    `state_fn()` returns the JSON state stored beside the weights (compute clock, data position, ...).
    """

    def __init__(self, manager, every, state_fn, guard, preemption=None, clock=None):
        super().__init__()
        self.manager, self.every, self.state_fn = manager, every, state_fn
        self.guard, self.preemption, self.clock = guard, preemption, clock
        self.preempted_at = None
        self.last_saved = None

    def _save(self, step):
        if step == self.last_saved or not self.guard.weights_finite():
            return
        if self.clock is not None:
            self.clock.pause()
        path = self.manager.save(self.model, step, self.state_fn())
        self.last_saved = step
        if path:
            log.debug("checkpoint %s", path)
        if self.clock is not None:
            self.clock.start()

    def on_train_batch_end(self, batch, logs=None):
        if self.guard.diverged is not None:
            return
        step = global_step(self.model)
        if step % self.every == 0:
            self._save(step)
        if self.preemption is not None and self.preemption.agree():
            self._save(step)
            self.preempted_at = self.preemption.stop_at = step
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        # The final save happens here, not in on_train_end: with `use_ema`, fit copies the weight averages into
        # the model before on_train_end, and a checkpoint must hold the raw weights it resumes from.
        if self.model.stop_training or epoch + 1 == self.params["epochs"]:
            self._save(global_step(self.model))


def _scalar(value):
    try:
        return float(value.numpy() if hasattr(value, "numpy") else value)
    except (TypeError, ValueError):
        return None


class StepProgress(keras.callbacks.Callback):
    """One line per Keras "epoch" in the run's own units: optimizer steps of the run and epochs of the corpus.

    The jobs give `model.fit` short "epochs" (a logging or checkpoint interval) over one long stream, so Keras'
    own progress ("Epoch 13/13") counts intervals, not anything the user asked for. Prints e.g.
    `step 84/168 (epoch 2.00/4 of the corpus): loss 0.4123, 35 s`; the loss is the mean over the interval.
    """

    def __init__(self, total_steps, global_batch_size, num_examples, label="step"):
        super().__init__()
        self.total_steps, self.batch, self.num_examples = total_steps, global_batch_size, num_examples
        self.label = label
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        step = global_step(self.model)
        epochs_done = step * self.batch / self.num_examples
        epochs_total = self.total_steps * self.batch / self.num_examples
        loss = _scalar((logs or {}).get("loss"))
        print(f"{self.label} {step}/{self.total_steps} (epoch {epochs_done:.2f}/{epochs_total:.3g} of the corpus): "
              + (f"loss {loss:.4f}, " if loss is not None else "") + f"{time.time() - self._start:.0f} s", flush=True)


class TrainingScalars(keras.callbacks.Callback):
    """TensorBoard scalars every `every` steps: train loss, learning rate, AGC clipped fraction and gradient norm,
    images/s (total and per device), MFU, accumulated FLOPs and device-hours. Also charges the compute clock.

    The first step group after a (re)start is counted in images and FLOPs but not in time: its wall time is
    mostly tracing and compilation, which says nothing about the model's cost.
    """

    def __init__(self, writer, clock, every, global_batch_size):
        super().__init__()
        self.writer, self.clock, self.every, self.batch = writer, clock, every, global_batch_size
        self._last_step = None

    def on_train_begin(self, logs=None):
        self._last_step = global_step(self.model)
        self.clock.pause()

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        self.clock.record((step - self._last_step) * self.batch)
        self._last_step = step
        if step % self.every:
            return
        scalars = {"train/loss": (logs or {}).get("loss")}
        optimizer = self.model.optimizer
        lr = optimizer.learning_rate
        scalars["train/learning_rate"] = lr(optimizer.iterations) if callable(lr) else lr
        metrics = getattr(optimizer, "metrics", None)
        if callable(metrics):
            for name, var in metrics().items():
                scalars[name] = var
        rates = self.clock.rates()
        scalars.update({
            "perf/images_per_second": rates["images_per_second"],
            "perf/images_per_second_per_device": rates["images_per_second_per_device"],
            "perf/mfu": rates["mfu"],
            "compute/flops": self.clock.flops,
            "compute/device_hours": self.clock.device_hours,
        })
        with self.writer.as_default(step=step):
            for name, value in scalars.items():
                value = _scalar(value)
                if value is not None:
                    tf.summary.scalar(name, value)
        self.writer.flush()


class HeldOutLoss(keras.callbacks.Callback):
    """Held-out loss every `every` steps and at the end, logged against the step and against accumulated compute
    (`heldout/loss_vs_mflops`: x = accumulated training MFLOPs; `heldout/loss_vs_device_seconds`), so a
    loss-vs-compute curve reads directly off TensorBoard."""

    def __init__(self, evaluator, writer, clock, every, guard, preemption=None):
        super().__init__()
        self.evaluator, self.writer, self.clock, self.every, self.guard = evaluator, writer, clock, every, guard
        self.preemption = preemption  # a preempted run stops without the final evaluation (its grace is short)
        self.history = []  # (step, loss, flops, device_hours)
        self._done_at = None

    def _evaluate(self, step):
        if self.guard.diverged is not None or step == self._done_at:
            return
        self.clock.pause()
        loss = self.evaluator()
        self.clock.start()
        self._done_at = step
        self.history.append((step, loss, self.clock.flops, self.clock.device_hours))
        with self.writer.as_default():
            tf.summary.scalar("heldout/loss", loss, step=step)
            tf.summary.scalar("heldout/loss_vs_mflops", loss, step=int(self.clock.flops / 1e6))
            tf.summary.scalar("heldout/loss_vs_device_seconds", loss, step=int(round(self.clock.device_seconds)))
        self.writer.flush()
        log.info("step %d: held-out loss %.5f (%.4g FLOPs, %.4g device-hours)", step, loss, self.clock.flops,
                 self.clock.device_hours)

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if step % self.every == 0:
            self._evaluate(step)

    def on_train_end(self, logs=None):
        if self.preemption is None or self.preemption.stop_at is None:
            self._evaluate(global_step(self.model))


class BadRecordScalars(keras.callbacks.Callback):
    """TensorBoard scalars `bad_records/<split>/<reason>`: distinct records skipped so far under
    `on_bad_record="skip"`, every `every` steps and at the end (`reports`: split -> BadRecordReport)."""

    def __init__(self, writer, reports, every):
        super().__init__()
        self.writer, self.reports, self.every = writer, reports, every

    def write(self, step):
        with self.writer.as_default(step=step):
            for split, report in self.reports.items():
                for reason, count in report.counts().items():
                    tf.summary.scalar(f"bad_records/{split}/{reason}", count)
        self.writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if step % self.every == 0:
            self.write(step)

    def on_train_end(self, logs=None):
        self.write(global_step(self.model))


def write_hparams(writer, config_dict, trial_id):
    """Log the run's hyperparameters with TensorBoard's hparams plugin."""
    from tensorboard.plugins.hparams import api as hp

    values = {k: v for k, v in config_dict.items() if isinstance(v, (bool, int, float, str))}
    with writer.as_default():
        hp.hparams(values, trial_id=trial_id)
    writer.flush()
