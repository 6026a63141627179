"""The toy scaling study: the paper's analysis (NFNET_SPEC.md section 5) at laptop scale on a 2-core CPU.

    python datasets/make_synthetic.py --out /tmp/nfnet_toy/corpus --num_images 8000 --num_holdout 1024 \
        --num_classes 10 --image_size 32 --multi_label=false
    python trainers/sweep.py --sweep trainers/configs/sweep_toy.py --workdir /tmp/nfnet_toy --mode plan
    python trainers/sweep.py --sweep trainers/configs/sweep_toy.py --workdir /tmp/nfnet_toy --mode run

`:smoke=true` is the same pipeline shrunk to four short runs (two models x two budgets x one learning rate) on
a 1k-image corpus, a couple of minutes end to end. Other overrides: `corpus=PATH`, `search=grid`.
"""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_sweep(smoke="false", corpus="", search="smart"):
    smoke = str(smoke).lower() in ("1", "true", "yes")
    if smoke:
        return dict(
            name="toy-smoke",
            pretrain_config=os.path.join(_HERE, "sweep_toy_pretrain.py"),
            variants=["tiny", "S0"],
            epoch_budgets=[0.25, 0.5],
            lr_grid=[0.4],
            initial_lr=0.4,
            lr_search=search,
            shared={"corpus": corpus or "/tmp/nfnet_toy_smoke/corpus", "global_batch_size": 32},
            n_bootstrap=200,
        )
    return dict(
        name="toy",
        pretrain_config=os.path.join(_HERE, "sweep_toy_pretrain.py"),
        variants=["S0", "S1", "S2"],
        epoch_budgets=[0.5, 1.0, 2.0, 4.0],
        # The trainer's base_learning_rate (per 256 examples), a factor-2 grid; the paper's best was 0.1 (peak 1.6
        # at batch 4096). The smart search starts at initial_lr and walks the grid only as far as it must.
        lr_grid=[0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2],
        initial_lr=0.4,
        lr_search=search,
        shared={"corpus": corpus or "/tmp/nfnet_toy/corpus"},
        compute="flops",
        size="params",
    )
