"""Held-out loss (the paper's metric) over a whole split, under any tf.distribute strategy.

Every example of the split counts once: the eval stream pads its last batch with weight-0 rows, and the loss is
sum(weight x per-example loss) / sum(weight) over all replicas and hosts. The model runs in inference mode
(no dropout, no stochastic depth) and the loss has no label smoothing.
"""
import tensorflow as tf

from keras_nfnet.data import pipeline


class HeldOutEvaluator:
    """Computes the held-out loss of `model` on `split` of `corpus`.

    Args:
      per_example_loss: fn(labels, logits) -> [batch] losses (float32).
      global_batch_size: eval batch over all replicas (a multiple of the replica count).
      on_bad_record, bad_record_report: as for `pipeline.eval_dataset`.
    """

    def __init__(self, model, strategy, corpus, split, global_batch_size, image_size, per_example_loss,
                 on_bad_record="raise", bad_record_report=None):
        self.model = model
        self.strategy = strategy
        self.steps = pipeline.eval_steps(corpus, split, global_batch_size)

        def dataset_fn(ctx):  # under "skip", bad rows get weight 0 like the padding rows
            return pipeline.eval_dataset(corpus, split, global_batch_size, image_size, input_context=ctx,
                                         on_bad_record=on_bad_record, bad_record_report=bad_record_report)

        self._dataset = strategy.distribute_datasets_from_function(dataset_fn)

        def replica_step(images, labels, weights):
            logits = tf.cast(model(images, training=False), tf.float32)
            losses = per_example_loss(labels, logits)
            return tf.reduce_sum(losses * weights), tf.reduce_sum(weights)

        steps = self.steps

        @tf.function
        def run(iterator):
            total = tf.constant(0.0)
            count = tf.constant(0.0)
            for _ in tf.range(steps):
                s, n = strategy.run(replica_step, args=next(iterator))
                total += strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None)
                count += strategy.reduce(tf.distribute.ReduceOp.SUM, n, axis=None)
            return total, count

        self._run = run

    def __call__(self):
        total, count = self._run(iter(self._dataset))
        count = float(count)
        if count <= 0:
            raise ValueError("the held-out split produced no examples")
        return float(total) / count
