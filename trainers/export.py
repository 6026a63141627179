"""Export a trained model as a SavedModel for TF Serving: `<base_dir>/<model_name>/<version>/`.

    python trainers/export.py --finetune_workdir=/runs/ft --base_dir=/tmp/serving --model_name=digits
    python trainers/export.py --model=/runs/ft/model.keras --image_size=64 --class_names=/data/names.txt \
        --base_dir=/tmp/serving --model_name=digits

With --finetune_workdir the model (the better of raw and EMA weights by top-1), the evaluation resolution and
the class names come from its result.json; flags given explicitly override them.
"""

from absl import app, flags
from keras_nfnet import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("finetune_workdir", None, "A fine-tuning work directory (reads its result.json).")
flags.DEFINE_string("model", None, "A .keras model file (logits over classes from normalised images).")
flags.DEFINE_string("base_dir", None, "Serving root; the export goes to <base_dir>/<model_name>/<version>.")
flags.DEFINE_string("model_name", None, "Name clients address: /v1/models/<model_name>.")
flags.DEFINE_integer("version", None, "Version number; default one more than the largest existing one.")
flags.DEFINE_integer("image_size", None, "Evaluation resolution inside the graph.")
flags.DEFINE_string("class_names", None, "Text file with one class name per line (line i = class i).")
flags.DEFINE_integer("top_k", 5, "Class ids and names returned per image.")
flags.DEFINE_bool("warmup", True, "Write assets.extra/tf_serving_warmup_requests.")
flags.DEFINE_integer("max_image_pixels", None,
                     "image_bytes whose header declares more pixels are refused before decoding (default 2^24).")
flags.mark_flags_as_required(["base_dir", "model_name"])


def main(argv):
    del argv
    import keras

    from keras_nfnet import storage
    from keras_nfnet.export import DEFAULT_MAX_IMAGE_PIXELS, export_for_serving

    model_path, image_size, class_names = FLAGS.model, FLAGS.image_size, None
    if FLAGS.finetune_workdir:
        from keras_nfnet.jobs import context

        result = context.read_result(FLAGS.finetune_workdir)
        if result is None or result.get("job") != "finetune":
            raise app.UsageError(f"{FLAGS.finetune_workdir} holds no fine-tuning {context.RESULT_FILE}: is it a "
                                 "finished fine-tuning run?")
        results = result["metrics"]
        model_path = model_path or results["best_model"]
        image_size = image_size or results["eval_image_size"]
        class_names = results["class_names"]
    if not model_path:
        raise app.UsageError("give --model=<file.keras> or --finetune_workdir=<dir>")
    if not storage.exists(model_path) or storage.isdir(model_path):
        raise app.UsageError(f"model file {model_path} does not exist")
    if FLAGS.class_names:
        class_names = storage.read_text(FLAGS.class_names).splitlines()
    model = keras.saving.load_model(storage.fetch_file(model_path), compile=False)
    export_for_serving(model, FLAGS.base_dir, FLAGS.model_name, version=FLAGS.version, class_names=class_names,
                       image_size=image_size, top_k=FLAGS.top_k, warmup=FLAGS.warmup,
                       max_image_pixels=FLAGS.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)


if __name__ == "__main__":
    cli.run(main)
