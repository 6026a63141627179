"""The toy scaling study: the paper's analysis (NFNET_SPEC.md section 5) at laptop scale on a 2-core CPU.

    python datasets/make_synthetic.py --out /tmp/nfnet_toy/corpus --num_images 64000 --num_holdout 2000 \
        --num_classes 10 --image_size 32 --multi_label=false
    nfnet-sweep --config=sweep_toy --workdir=/tmp/nfnet_toy/nfnet --mode=plan
    nfnet-sweep --config=sweep_toy --workdir=/tmp/nfnet_toy/nfnet --mode=run
    nfnet-sweep --config=sweep_toy:vit --workdir=/tmp/nfnet_toy/vit --mode=run     # the ViT baseline

`--config=sweep_toy:smoke` is the same pipeline shrunk to four short runs (two models x two budgets x one learning
rate) on a 1k-image corpus, a couple of minutes end to end. Override the corpus with
`--config.shared.corpus=PATH` and the search with `--config.lr_search=grid`.
"""
import ml_collections

from keras_nfnet.jobs import defaults

CORPUS = "/tmp/nfnet_toy/corpus"


def get_config(arg=None):
    if arg not in (None, "", "smoke", "vit"):
        raise ValueError(f"sweep_toy takes no argument, 'smoke' or 'vit'; got {arg!r}")
    c = defaults.sweep()
    c.pretrain_config = "sweep_toy_pretrain"
    c.lr_search = "smart"
    c.parallel_runs = 2            # two runs at a time: a run at 32 px keeps about one core busy
    if arg == "smoke":
        c.name = "toy-smoke"
        c.variants = ("tiny", "S0")
        c.epoch_budgets = (0.25, 0.5)
        c.lr_grid = (0.4,)
        c.initial_lr = 0.4
        c.shared = ml_collections.ConfigDict({"corpus": "/tmp/nfnet_toy_smoke/corpus", "global_batch_size": 32})
        c.n_bootstrap = 200
        return c
    c.shared = ml_collections.ConfigDict({"corpus": CORPUS})
    c.compute = "flops"
    c.size = "params"
    if arg == "vit":
        # The ViT baseline: a ladder matched to S0..S3 in MACs per image, AdamW, at two of the study's budgets.
        c.name = "toy-vit"
        c.pretrain_config = "sweep_toy_pretrain:vit"
        c.variants = ("ViT-0", "ViT-1", "ViT-2", "ViT-3")
        c.epoch_budgets = (0.5, 2.0)
        c.lr_grid = (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)  # AdamW peak 6e-5 .. 8e-3 at batch 64
        c.initial_lr = 4e-3
        return c
    c.name = "toy"
    # Five sizes (6.5k to 1.1M parameters with the 10-class head), six budgets from 1/8 to 4 epochs of the 64,000
    # training images (125 to 4,000 steps of 64): 1.5 decades of epochs, 3 decades of compute over the grid.
    c.variants = ("tiny", "S0", "S1", "S2", "S3")
    c.epoch_budgets = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
    # The runs' base_learning_rate (per 256 examples), a factor-2 grid; the paper's best was 0.1 (peak 1.6 at batch
    # 4096). The smart search starts at initial_lr and walks the grid only as far as it must.
    c.lr_grid = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
    c.initial_lr = 0.4
    return c
