"""The image-label corpus (format, writer, index, metadata, verify), the exactly-once sampler, preprocessing,
augmentation and the train/eval input pipelines. See docs/data.md."""
from keras_nfnet.data.corpus import CorpusInfo, CorpusWriter, load_metadata
from keras_nfnet.data.pipeline import (BadRecordReport, eval_dataset, eval_steps, find_bad_records,
                                       naming_bad_records, record_batches, train_dataset, train_step_records)
from keras_nfnet.data.preprocess import normalize_image, preprocess_for_eval
from keras_nfnet.data.records import CorruptRecordError

__all__ = [
    "BadRecordReport", "CorpusInfo", "CorpusWriter", "CorruptRecordError", "eval_dataset",
    "eval_steps", "find_bad_records", "load_metadata", "naming_bad_records", "normalize_image",
    "preprocess_for_eval", "record_batches", "train_dataset", "train_step_records",
]
