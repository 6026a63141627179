"""Model families by name: the NFNet rows (`keras_nfnet.variants`) and the ViT baseline rows
(`keras_nfnet.vit_variants`, model in `keras_nfnet.vit`).

The jobs (pretraining, fine-tuning, sweeps) take a model name in their `variant` field; this module turns it into
a model, a row (train/test resolution, smallest input) and analytic parameter and MAC counts, whichever family
it names, so that both families are trained, costed and compared by the same code.
"""
from keras_nfnet import flops
from keras_nfnet import vit_variants as vit
from keras_nfnet.variants import VARIANTS, NFNetVariant, get_variant


def known_names():
    return list(VARIANTS) + list(vit.VIT_VARIANTS)


def family(name):
    """'nfnet' or 'vit' for a model name, a variant row or a row's dict; ValueError naming the known models
    otherwise."""
    if isinstance(name, str) and name in VARIANTS or isinstance(name, NFNetVariant):
        return "nfnet"
    if isinstance(name, str) and name in vit.VIT_VARIANTS or isinstance(name, vit.ViTVariant):
        return "vit"
    if isinstance(name, dict):  # a custom row (e.g. from a preset's config)
        return "vit" if "patch_size" in name else "nfnet"
    raise ValueError(f"unknown model {name!r}; known: {', '.join(known_names())}")


def get_row(name):
    """The variant row (train_image_size, test_image_size, min_image_size, ...) of a model name or row."""
    return get_variant(name) if family(name) == "nfnet" else vit.get_vit_variant(name)


def build(name, num_classes, **kwargs):
    """`NFNet(name, num_classes, **kwargs)` or `ViT(name, num_classes, **kwargs)`."""
    if family(name) == "nfnet":
        from keras_nfnet.models import NFNet

        return NFNet(name, num_classes=num_classes, **kwargs)
    from keras_nfnet.vit import ViT

    return ViT(name, num_classes=num_classes, **kwargs)


def count_params(name, num_classes=1000):
    module = flops if family(name) == "nfnet" else vit
    return module.count_params(name, num_classes=num_classes)


def count_macs(name, image_size, num_classes=1000):
    module = flops if family(name) == "nfnet" else vit
    return module.count_macs(name, image_size, num_classes=num_classes)
