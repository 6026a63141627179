"""Where a trained model comes from: a pretraining work directory (its newest checkpoint), one checkpoint
directory (`.../checkpoints/ckpt-<step>`), a `.keras` model file, a preset directory (`keras_nfnet.presets`), or a
fine-tuning work directory (the better of its saved models, by its result)."""
import logging
import os

from keras_nfnet import architectures, storage

log = logging.getLogger(__name__)
KINDS = "a pretrain or fine-tune workdir, a checkpoint directory, a .keras file or a preset directory"


def _checkpoint_weights(source):
    """(weights file, pretrain config dict) for a pretrain workdir or one of its checkpoint directories."""
    from keras_nfnet.jobs import config as config_lib
    from keras_nfnet.training.checkpoint import WEIGHTS_FILE, CheckpointManager

    # "ckpt-00120/" (shell completion) names the same directory
    source = source.rstrip("/") if storage.is_remote(source) else os.path.normpath(source)
    if storage.exists(storage.join(source, WEIGHTS_FILE)):
        weights, workdir = storage.join(source, WEIGHTS_FILE), storage.dirname(storage.dirname(source))
    else:
        manager = CheckpointManager(storage.join(source, "checkpoints"), write=False)
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{source} holds no checkpoint: expected {KINDS} (a pretrain workdir holds "
                                    f"checkpoints/ckpt-<step>/{WEIGHTS_FILE})")
        weights, workdir = storage.join(manager.path(step), WEIGHTS_FILE), source
    saved = config_lib.read_saved(workdir)
    if saved is None:
        raise FileNotFoundError(f"no {config_lib.SAVED_CONFIG} next to the checkpoint (in {workdir}): cannot tell "
                                "its variant")
    if "source" in saved:  # a fine-tuning run's checkpoints are for resuming it; its models come at the end
        raise ValueError(f"{workdir} is a fine-tuning run that has not finished (no result.json): run its command "
                         "again to finish it, then use the workdir (or its model.keras)")
    return weights, saved


def _classes_in_weights(weights_file):
    """Number of classes of the checkpoint's classifier (its only top-level Dense layer)."""
    import h5py

    with h5py.File(weights_file, "r") as f:
        dense = [name for name in f["layers"] if name == "dense" or name.startswith("dense_")]
        if len(dense) != 1:
            raise ValueError(f"{weights_file}: expected one classifier Dense layer, found {dense}")
        return int(f["layers"][dense[0]]["vars"]["0"].shape[-1])


def load_model(source):
    """The NFNet or ViT (weights loaded, not compiled) that `source` names (see the module docstring)."""
    import keras

    from keras_nfnet import presets
    from keras_nfnet.jobs import context
    from keras_nfnet.models import NFNet
    from keras_nfnet.vit import ViT

    if not storage.exists(source):
        raise FileNotFoundError(f"source {source} does not exist ({KINDS})")
    if presets.is_preset(source):
        return presets.load_nfnet(source)
    finished = context.read_result(source) if storage.isdir(source) else None
    if finished is not None and finished.get("job") == "finetune":
        source = finished["metrics"]["best_model"]
    if source.endswith(".keras"):
        model = keras.saving.load_model(storage.fetch_file(source), compile=False)
        if not isinstance(model, (NFNet, ViT)):
            raise ValueError(f"{source} holds a {type(model).__name__}, not a keras_nfnet NFNet or ViT")
        return model
    weights, pre = _checkpoint_weights(source)
    weights = storage.fetch_file(weights)  # h5py reads local files
    model = architectures.build(pre["variant"], num_classes=_classes_in_weights(weights), stochastic_depth_rate=0.0,
                                dropout_rate=0.0)
    try:
        model.load_weights(weights)
    except Exception as err:  # noqa: BLE001 - h5py/Keras raise many kinds for a damaged file
        raise ValueError(f"checkpoint weights {weights} do not load ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); name an intact checkpoint directory "
                         "as source") from err
    log.info("loaded %s (%s) from %s", pre["variant"], model.num_classes, weights)
    return model

