"""Write scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes; shipped inside the scikit-learn
wheel, no download) as a corpus with splits "train" and "test", for fine-tuning demos and tests.

    python datasets/make_digits.py --out /tmp/digits --image_size 32

Each 8x8 scan (ink 0..16) is scaled to 0..255 grey, centred on a 12x12 blank canvas, upsampled bicubically to
image_size and stored as an RGB PNG.
The split is stratified and a function of `seed` (default: 25% of each class for "test").
"""
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet.data.corpus import CorpusWriter  # noqa: E402
from keras_nfnet import cli  # noqa: E402

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_digits_corpus(out_dir, image_size=32, test_fraction=0.25, seed=0):
    """Write the corpus; returns {split: number of images}."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    # A blank margin of a quarter digit on every side (the digit fills the central two thirds of the image), as on
    # a scanned form. Fine-tune on whole images (--crop=false): the evaluation view is then the whole image too.
    images = np.pad(digits.images * (255.0 / 16.0), ((0, 0), (2, 2), (2, 2))).astype(np.float32)[..., None]
    rng = np.random.default_rng(seed)
    split_of = np.empty(len(images), dtype=object)
    for label in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == label))
        n_test = int(round(test_fraction * len(members)))
        split_of[members[:n_test]] = "test"
        split_of[members[n_test:]] = "train"
    big = tf.image.resize(images, [image_size, image_size], method="bicubic")
    rgb = tf.cast(tf.clip_by_value(tf.round(tf.tile(big, [1, 1, 1, 3])), 0, 255), tf.uint8)
    counts = {}
    with CorpusWriter(out_dir, num_classes=10, class_names=CLASS_NAMES, image_format="png",
                      name="sklearn-digits", description="scikit-learn load_digits, upsampled") as writer:
        for i in rng.permutation(len(images)):
            writer.add(split_of[i], tf.io.encode_png(rgb[i]).numpy(), [int(digits.target[i])], int(i))
            counts[split_of[i]] = counts.get(split_of[i], 0) + 1
    return counts


def main(argv):
    del argv
    f = flags.FLAGS
    counts = make_digits_corpus(f.out, f.image_size, f.test_fraction, f.seed)
    print(f"wrote scikit-learn digits to {f.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "output corpus directory (must not already hold a corpus)")
    flags.DEFINE_integer("image_size", 32, "stored image side in pixels")
    flags.DEFINE_float("test_fraction", 0.25, "fraction of each class in the test split")
    flags.DEFINE_integer("seed", 0, "seed of the split and the write order")
    flags.mark_flag_as_required("out")
    cli.run(main)
