"""The image-label corpus (format, writer, index, metadata, verify), the exactly-once sampler, preprocessing,
augmentation and the train/eval input pipelines. See docs/data.md."""
from keras_nfnet.data.corpus import CorpusInfo, CorpusWriter, load_metadata
from keras_nfnet.data.pipeline import (BadRecordReport, UndecodableImageError, eval_dataset, eval_steps,
                                       find_undecodable_images, naming_undecodable_images, record_batches,
                                       train_dataset, train_step_records)
from keras_nfnet.data.preprocess import normalize_image, preprocess_for_eval
from keras_nfnet.data.records import CorruptRecordError

__all__ = [
    "BadRecordReport", "CorpusInfo", "CorpusWriter", "CorruptRecordError", "UndecodableImageError", "eval_dataset",
    "eval_steps", "find_undecodable_images", "load_metadata", "naming_undecodable_images", "normalize_image",
    "preprocess_for_eval", "record_batches", "train_dataset", "train_step_records",
]
