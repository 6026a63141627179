"""Convert a released NFNet checkpoint (DeepMind's Haiku `.npz`, timm's `.safetensors`/`.pth`) into a preset.

    python trainers/convert_weights.py --checkpoint=F0_haiku.npz --output=presets/nfnet_f0 \
        --class_names=imagenet_classes.txt
    python trainers/convert_weights.py --checkpoint=dm_nfnet_f0.safetensors --output=presets/dm_nfnet_f0_timm

The file's layout and variant are detected from its tensors; every tensor must be used and every shape must fit,
else the app names the tensor, its shape and the expected one (exit status 2). Numerics default to those the
weights were used with: DeepMind's for DeepMind files, timm's for timm files.
"""
from absl import flags

from keras_nfnet import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "The released checkpoint file.")
flags.DEFINE_string("output", None, "Preset directory to write (must not exist).")
flags.DEFINE_string("variant", "auto", "auto (detect from the file), a name in keras_nfnet.VARIANTS, or 'infer' "
                    "(an NFNetVariant row read from the file's shapes, for checkpoints of no known variant).")
flags.DEFINE_enum("numerics", "auto", ["auto", "deepmind", "timm"], "Layer arithmetic; auto = the source's.")
flags.DEFINE_enum("source_format", "auto", ["auto", "deepmind", "timm"], "Checkpoint layout; auto = detect.")
flags.DEFINE_string("class_names", None, "Text file with one class name per line (line i = class i).")
flags.DEFINE_float("crop_fraction", None, "Evaluation view's crop fraction in (0, 1]; default the papers' "
                   "size / (size + 32).")
flags.DEFINE_integer("image_size", None, "Evaluation resolution; default the variant's test resolution.")
flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
    del argv
    import os

    from keras_nfnet.converters.convert import convert_tensors, infer_variant
    from keras_nfnet.converters.tensor_files import read_tensors
    from keras_nfnet.presets import save_preset

    if os.path.exists(FLAGS.output):
        raise ValueError(f"--output {FLAGS.output} already exists; choose a new preset directory")
    source_format = None if FLAGS.source_format == "auto" else FLAGS.source_format
    tensors = read_tensors(FLAGS.checkpoint)
    variant = {"auto": None, "infer": "infer"}.get(FLAGS.variant, FLAGS.variant)
    if variant == "infer":
        variant = infer_variant(tensors, source_format, path=FLAGS.checkpoint)
    converted = convert_tensors(tensors, variant=variant, source_format=source_format, path=FLAGS.checkpoint)
    class_names = None
    if FLAGS.class_names:
        with open(FLAGS.class_names) as f:
            class_names = [line.rstrip("\r\n") for line in f if line.strip()]
    model = converted.classifier(numerics=None if FLAGS.numerics == "auto" else FLAGS.numerics,
                                 class_names=class_names, image_size=FLAGS.image_size,
                                 crop_fraction=FLAGS.crop_fraction)
    save_preset(model, FLAGS.output, source={"checkpoint": os.path.basename(FLAGS.checkpoint),
                                             "format": converted.source_format, "tensors": len(tensors)})
    print(f"{FLAGS.checkpoint}: {converted.source_format} layout, variant {converted.variant.name}, "
          f"{len(tensors)} tensors, {model.count_params():,} parameters, numerics {model.numerics} -> preset "
          f"{FLAGS.output}")


if __name__ == "__main__":
    cli.run(main)
