"""Convert a locally available TFDS dataset to a corpus (nothing is downloaded).

    python datasets/convert_tfds.py --name imagenet2012 --data_dir /data/tfds --splits train,validation \
        --out /tmp/imagenet_corpus

A failed conversion leaves nothing at --out.
"""
import logging
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet.data import convert  # noqa: E402
from keras_nfnet import cli  # noqa: E402

flags.DEFINE_string("name", None, "TFDS dataset name, e.g. mnist or imagenet2012")
flags.DEFINE_string("out", None, "output corpus directory (must not exist, or be empty)")
flags.DEFINE_string("data_dir", None, "TFDS data directory holding the prepared dataset")
flags.DEFINE_list("splits", ["train"], "TFDS split specs, each a corpus split named after it (train[:10%] -> "
                  "train_10), or name=spec (test=train[90%:])")
flags.DEFINE_string("image_key", "image", "image feature")
flags.DEFINE_string("label_key", "label", "ClassLabel (or Sequence of ClassLabel) feature")
flags.DEFINE_enum("image_format", "auto", list(convert.STORE_FORMATS),
                  "auto: JPEG and PNG images as TFDS stores them, other formats as PNG; jpeg / png: that encoding")
flags.DEFINE_integer("examples_per_shard", 1024, "records per TFRecord shard")
flags.DEFINE_integer("max_examples", None, "convert at most this many examples per split")
flags.mark_flags_as_required(["name", "out"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    f = flags.FLAGS
    stats = convert.convert_tfds(f.name, f.out, splits=f.splits, data_dir=f.data_dir, image_key=f.image_key,
                                 label_key=f.label_key, image_format=f.image_format,
                                 examples_per_shard=f.examples_per_shard, max_examples=f.max_examples)
    print(f"wrote {stats['images']} images {stats['splits']} ({stats['formats']}) to {f.out} in "
          f"{stats['seconds']:.1f} s")


if __name__ == "__main__":
    cli.run(main)
