"""Convert an image folder to a corpus.

    python datasets/convert_image_folder.py --src /data/flowers --out /tmp/flowers_corpus

Layouts: `src/<split>/<class>/<images>` (e.g. train/ and test/: each split folder becomes a corpus split of the
same name, with one class list) or `src/<class>/<images>` (a stratified --test_fraction of each class becomes
split "test", the rest "train"). JPEG and PNG files are stored byte for byte; other formats are re-encoded as
PNG (lossless) unless --image_format asks for one encoding. A failed conversion leaves nothing at --out.
"""
import logging
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet.data import convert  # noqa: E402
from keras_nfnet import cli  # noqa: E402

flags.DEFINE_string("src", None, "image folder: <split>/<class>/<images> or <class>/<images>")
flags.DEFINE_string("out", None, "output corpus directory (must not exist, or be empty)")
flags.DEFINE_float("test_fraction", 0.1, "without split folders: stratified fraction of each class put in split "
                   "'test'")
flags.DEFINE_integer("seed", 0, "seed of the test selection")
flags.DEFINE_enum("image_format", "auto", list(convert.STORE_FORMATS),
                  "auto: JPEG and PNG files as they are, other formats as PNG; jpeg / png: that encoding throughout")
flags.DEFINE_integer("examples_per_shard", 1024, "records per TFRecord shard")
flags.DEFINE_enum("on_bad_image", "raise", ["raise", "skip"], "unreadable image files: stop, or skip and count")
flags.mark_flags_as_required(["src", "out"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    f = flags.FLAGS
    stats = convert.convert_image_folder(f.src, f.out, test_fraction=f.test_fraction, seed=f.seed,
                                         image_format=f.image_format, examples_per_shard=f.examples_per_shard,
                                         on_bad_image=f.on_bad_image)
    print(f"wrote {stats['images']} images {stats['splits']} ({stats['formats']}) to {f.out} in "
          f"{stats['seconds']:.1f} s; skipped {len(stats['skipped'])}")
    for s in stats["skipped"]:
        print(f"  skipped: {s}")


if __name__ == "__main__":
    cli.run(main)
