"""The image-label corpus (format, writer, index, metadata, verify), the exactly-once sampler, preprocessing,
augmentation and the train/eval input pipelines."""
