"""Training glue: strategy resolution, Keras-under-tf.distribute workarounds, checkpoints, the compute clock,
callbacks, run configs and the pretraining job itself.

Submodules are imported on use so that importing the package does not start TensorFlow.
"""
