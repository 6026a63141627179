"""Write the synthetic JFT-like corpus (splits "train" and "holdout").

    python datasets/make_synthetic.py --out /tmp/synth --num_images 100000 --num_classes 1000 --image_size 64
"""
import logging
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet.data import synthetic  # noqa: E402
from keras_nfnet import cli  # noqa: E402

flags.DEFINE_string("out", None, "output corpus directory (must not already hold a corpus)")
flags.DEFINE_integer("num_images", 10000, "training images")
flags.DEFINE_integer("num_holdout", None, "held-out images (default 5% of num_images)")
flags.DEFINE_integer("num_classes", 1000, "number of classes (30000 for a JFT-sized label space)")
flags.DEFINE_integer("image_size", 64, "image side in pixels (>= 8; a multiple of 16 for --labels conv16)")
flags.DEFINE_enum("labels", "compositional", ["compositional", "conv16"],
                  "label model: compositional scenes (rewards model size, docs/data.md) or the first conv16 teacher")
flags.DEFINE_integer("seed", 0, "seed: the corpus is a function of it")
flags.DEFINE_bool("multi_label", True, "several labels per image (JFT-like)")
flags.DEFINE_float("zipf_exponent", 1.0, "long tail of the class frequencies")
flags.DEFINE_float("label_noise", 0.05, "fraction of labels replaced by random classes")
flags.DEFINE_enum("image_format", "jpeg", ["jpeg", "png"], "encoding of the images")
flags.DEFINE_integer("examples_per_shard", 1024, "records per TFRecord shard")
flags.mark_flag_as_required("out")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    f = flags.FLAGS
    stats = synthetic.make_synthetic_corpus(
        f.out, num_images=f.num_images, num_classes=f.num_classes, image_size=f.image_size,
        num_holdout=f.num_holdout, seed=f.seed, multi_label=f.multi_label, zipf_exponent=f.zipf_exponent,
        label_noise=f.label_noise, image_format=f.image_format, examples_per_shard=f.examples_per_shard,
        labels=f.labels)
    print(f"wrote {stats['images']} images to {f.out} in {stats['seconds']:.1f} s "
          f"({stats['images_per_second']:.0f} images/s)")


if __name__ == "__main__":
    cli.run(main)
