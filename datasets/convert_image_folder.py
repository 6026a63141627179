"""Convert an image folder (one sub-folder per class) to a corpus.

    python datasets/convert_image_folder.py --src /data/flowers --out /tmp/flowers_corpus --holdout_fraction 0.1
"""
import logging
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet.data import convert  # noqa: E402
from keras_nfnet import cli  # noqa: E402

flags.DEFINE_string("src", None, "folder with one sub-folder of images per class")
flags.DEFINE_string("out", None, "output corpus directory (must not already hold a corpus)")
flags.DEFINE_float("holdout_fraction", 0.1, "stratified fraction of each class put in the holdout split")
flags.DEFINE_integer("seed", 0, "seed of the holdout selection")
flags.DEFINE_enum("image_format", "jpeg", ["jpeg", "png"], "stored encoding (other files are re-encoded)")
flags.DEFINE_integer("examples_per_shard", 1024, "records per TFRecord shard")
flags.DEFINE_enum("on_bad_image", "raise", ["raise", "skip"], "unreadable image files: stop, or skip and count")
flags.mark_flags_as_required(["src", "out"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    f = flags.FLAGS
    stats = convert.convert_image_folder(f.src, f.out, holdout_fraction=f.holdout_fraction, seed=f.seed,
                                         image_format=f.image_format, examples_per_shard=f.examples_per_shard,
                                         on_bad_image=f.on_bad_image)
    print(f"wrote {stats['images']} images {stats['splits']} to {f.out} in {stats['seconds']:.1f} s; "
          f"skipped {len(stats['skipped'])}")
    for s in stats["skipped"]:
        print(f"  skipped: {s}")


if __name__ == "__main__":
    cli.run(main)
