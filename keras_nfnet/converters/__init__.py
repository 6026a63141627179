"""Converters from released NFNet checkpoints (DeepMind's Haiku files, timm's state dicts) to Keras weights."""
from keras_nfnet.converters.convert import (ConvertedCheckpoint, convert_tensors, detect_format,  # noqa: F401
                                            infer_variant, load_checkpoint)
from keras_nfnet.converters.safe_pickle import UnsafePickleError  # noqa: F401
