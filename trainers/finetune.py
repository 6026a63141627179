"""Fine-tune a pretrained NFNet on a labelled corpus and report top-1/top-5 (raw and EMA weights).

    python trainers/finetune.py --source=/runs/pretrain --corpus=/data/digits --workdir=/runs/ft \
        --image_size=48 --eval_image_size=64 --epochs=5 --sam_rho=0.05 --repeats=2

Every field of `keras_nfnet.finetune.FinetuneConfig` is a flag of the same name (defaults: the NFNet fine-tuning
recipe). Without --source the same architecture (--variant) is trained from scratch with the same budget.
"""
import dataclasses
import logging

from absl import app, flags

from keras_nfnet.finetune import FinetuneConfig, finetune

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for results.json, model.keras, model_ema.keras, TensorBoard logs.")
flags.mark_flag_as_required("workdir")
_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
for _field in dataclasses.fields(FinetuneConfig):
    _DEFINE[_field.type if isinstance(_field.type, type) else eval(_field.type)](
        _field.name, _field.default, f"FinetuneConfig.{_field.name}")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = FinetuneConfig(**{f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(FinetuneConfig)})
    finetune(config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
