"""Pretrain an NFNet on a corpus with model.fit under a tf.distribute strategy.

    python -m trainers.pretrain --config trainers/configs/cpu_tiny.py:corpus=/tmp/corpus --workdir /tmp/run

Re-running the same command resumes from the newest checkpoint in --workdir. SIGTERM saves a checkpoint and
exits with status 143 (re-run to continue); a NaN/inf loss exits with status 3, leaving the last good
checkpoint; a user error (bad flag or config, damaged corpus, bad record, no intact checkpoint) exits with status 2
and one `error:` line.
"""
import logging
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet import cli  # noqa: E402

flags.DEFINE_string("config", None, "config file with overrides: path.py[:key=value,key=value]", required=True)
flags.DEFINE_multi_string("set", [], "more overrides, key=value (may repeat)")
flags.DEFINE_string("workdir", None, "directory for checkpoints, TensorBoard logs and the result", required=True)
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run refuses stray arguments
    logging.getLogger("keras_nfnet").setLevel(logging.INFO)
    from keras_nfnet.training import config as config_lib

    config = config_lib.load_config(FLAGS.config, FLAGS.set)
    config_lib.validate(config)
    from keras_nfnet.training import callbacks as cb
    from keras_nfnet.training.pretrain import pretrain

    print(f"TensorBoard logs: {FLAGS.workdir}/tensorboard  (tensorboard --logdir {FLAGS.workdir}/tensorboard)",
          flush=True)
    try:
        result = pretrain(config, FLAGS.workdir)
    except cb.TrainingDiverged as error:
        return cli.report(error, 3)
    print(f"{result.status} at step {result.step}/{result.total_steps}: held-out loss {result.heldout_loss:.4f}, "
          f"{result.flops:.3g} training FLOPs, {result.device_hours:.3g} device-hours", flush=True)
    print(f"final weights sha256: {result.weights_sha256}", flush=True)
    print(f"TensorBoard logs: {result.tensorboard_dir}", flush=True)
    return 143 if result.status == "preempted" else 0


if __name__ == "__main__":
    cli.run(main)
