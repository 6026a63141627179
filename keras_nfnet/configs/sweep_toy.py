"""The toy scaling study: the paper's analysis (NFNET_SPEC.md section 5) at laptop scale on a 2-core CPU.

    python datasets/make_synthetic.py --out /tmp/nfnet_toy/corpus --num_images 8000 --num_holdout 1024 \
        --num_classes 10 --image_size 32 --multi_label=false
    nfnet-sweep --config=sweep_toy --workdir=/tmp/nfnet_toy --mode=plan
    nfnet-sweep --config=sweep_toy --workdir=/tmp/nfnet_toy --mode=run

`--config=sweep_toy:smoke` is the same pipeline shrunk to four short runs (two models x two budgets x one learning
rate) on a 1k-image corpus, a couple of minutes end to end. Override the corpus with
`--config.shared.corpus=PATH` and the search with `--config.lr_search=grid`.
"""
import ml_collections

from keras_nfnet.jobs import defaults


def get_config(arg=None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"sweep_toy takes no argument or 'smoke'; got {arg!r}")
    c = defaults.sweep()
    c.pretrain_config = "sweep_toy_pretrain"
    c.lr_search = "smart"
    if arg == "smoke":
        c.name = "toy-smoke"
        c.variants = ("tiny", "S0")
        c.epoch_budgets = (0.25, 0.5)
        c.lr_grid = (0.4,)
        c.initial_lr = 0.4
        c.shared = ml_collections.ConfigDict({"corpus": "/tmp/nfnet_toy_smoke/corpus", "global_batch_size": 32})
        c.n_bootstrap = 200
        return c
    c.name = "toy"
    c.variants = ("S0", "S1", "S2")
    c.epoch_budgets = (0.5, 1.0, 2.0, 4.0)
    # The runs' base_learning_rate (per 256 examples), a factor-2 grid; the paper's best was 0.1 (peak 1.6 at batch
    # 4096). The smart search starts at initial_lr and walks the grid only as far as it must.
    c.lr_grid = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
    c.initial_lr = 0.4
    c.shared = ml_collections.ConfigDict({"corpus": "/tmp/nfnet_toy/corpus"})
    c.compute = "flops"
    c.size = "params"
    return c
