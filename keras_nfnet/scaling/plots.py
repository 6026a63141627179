"""The study's figures as PNG files, and the same images in TensorBoard.

  loss_vs_compute.png    held-out loss vs compute per model, the frontier and the fitted power law (paper Fig. 2)
  loss_vs_lr.png         held-out loss vs learning rate, a line per epoch budget, a panel per model (paper Fig. 3)
  optimal_allocation.png compute-optimal model size and epoch budget vs compute, with their fitted power laws
  best_lr.png            best learning rate vs epoch budget per model
  finetuned_top1_vs_compute.png  fine-tuned top-1 vs pretraining compute, NFNet vs ViT (paper Fig. 1; families.py)

Matplotlib runs with its non-interactive Agg backend so plotting works on headless machines.
"""
import os
from typing import Dict, List, Optional

import numpy as np

from keras_nfnet import storage
from keras_nfnet.scaling import fit as fitlib

_COMPUTE_LABEL = {"flops": "training compute (FLOPs)", "device_hours": "training compute (device-hours)"}
_SIZE_LABEL = {"params": "parameters", "macs_per_image": "MACs per image"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ci(f: fitlib.PowerLawFit) -> str:
    return f"{f.exponent:.3f} [{f.exponent_ci[0]:.3f}, {f.exponent_ci[1]:.3f}]"


def plot_loss_vs_compute(cells: List[fitlib.Cell], frontier: List[fitlib.Cell],
                         loss_fit: Optional[fitlib.PowerLawFit], compute: str, path: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for variant in dict.fromkeys(c.variant for c in cells):
        mine = sorted((c for c in cells if c.variant == variant), key=lambda c: c.compute)
        ax.plot([c.compute for c in mine], [c.loss for c in mine], "o-", alpha=0.8, label=variant)
        for c in mine:
            ax.annotate(f"{c.epochs:g}", (c.compute, c.loss), textcoords="offset points", xytext=(3, 3),
                        fontsize=7, alpha=0.7)
    ax.plot([c.compute for c in frontier], [c.loss for c in frontier], "k*", markersize=11,
            label="compute-optimal frontier")
    if loss_fit is not None:
        xs = np.geomspace(min(c.compute for c in frontier), max(c.compute for c in frontier), 100)
        extra = f" + {loss_fit.irreducible:.3g}" if loss_fit.irreducible_ci is not None else ""
        ax.plot(xs, loss_fit.predict(xs), "k--",
                label=f"fit: {loss_fit.coefficient:.3g} C^{loss_fit.exponent:.3f}{extra}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_COMPUTE_LABEL[compute])
    ax.set_ylabel("held-out loss (best LR per budget)")
    ax.set_title("Held-out loss vs compute (numbers: epoch budget)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_loss_vs_lr(cells: List[fitlib.Cell], path: str) -> str:
    plt = _pyplot()
    variants = list(dict.fromkeys(c.variant for c in cells))
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.8), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    budgets = sorted({c.epochs for c in cells})
    for ax, variant in zip(axes[0], variants):
        for c in sorted((c for c in cells if c.variant == variant), key=lambda c: c.epochs):
            color = cmap(budgets.index(c.epochs) / max(1, len(budgets) - 1))
            ax.plot(c.lrs, c.losses, "o-", color=color, label=f"{c.epochs:g} ep")
            ax.plot([c.best_lr], [c.loss], "*", color=color, markersize=12)
        ax.set_xscale("log", base=2)
        ax.set_title(variant)
        ax.set_xlabel("learning rate (base, per 256 examples)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("held-out loss")
    fig.suptitle("Held-out loss vs learning rate per epoch budget (stars: best)")
    return _save(fig, path)


def plot_allocation(alloc: fitlib.AllocationFit, compute: str, path: str) -> str:
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    cx = np.array([c.compute for c in alloc.frontier])
    xs = np.geomspace(cx.min(), cx.max(), 100)
    for ax, values, f, label in (
            (ax1, [c.size(alloc.size_axis) for c in alloc.frontier], alloc.size,
             f"compute-optimal {_SIZE_LABEL[alloc.size_axis]}"),
            (ax2, [c.epochs for c in alloc.frontier], alloc.epochs, "compute-optimal epoch budget")):
        ax.plot(cx, values, "k*", markersize=10, label="frontier cells")
        previous = None
        for c, v in zip(alloc.frontier, values):
            if c.variant != previous:  # label where the optimal model changes, not every point
                ax.annotate(c.variant, (c.compute, v), textcoords="offset points", xytext=(3, -10), fontsize=7)
            previous = c.variant
        ax.plot(xs, f.predict(xs), "r--", label=f"exponent {_ci(f)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(_COMPUTE_LABEL[compute])
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("Compute-optimal allocation (95% bootstrap intervals)")
    return _save(fig, path)


def plot_best_lr(lr_fits: Dict[str, dict], path: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for variant, entry in lr_fits.items():
        line, = ax.plot(entry["epochs"], entry["refined_lr"], "o-", label=variant)
        ax.plot(entry["epochs"], entry["best_lr"], "x", color=line.get_color(), alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("epoch budget")
    ax.set_ylabel("best learning rate (base, per 256 examples)")
    ax.set_title("Best LR vs epoch budget (o: parabola-refined, x: best grid LR)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_finetune_vs_compute(rows: List[dict], path: str) -> str:
    """Fine-tuned top-1 against pretraining FLOPs, a colour per family; the line joins each family's best top-1
    reached at or below each compute (its frontier)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = sorted((r for r in rows if r["family"] == family), key=lambda r: r["pretrain_flops"])
        xs, ys = [r["pretrain_flops"] for r in mine], [r["finetune_top1"] for r in mine]
        points = ax.plot(xs, ys, "o", alpha=0.8, label=f"{family} ({len(mine)} runs)")[0]
        ax.plot(xs, np.maximum.accumulate(ys), "-", color=points.get_color(), alpha=0.6)
        for r in mine:
            ax.annotate(f"{r['model']} {r['epochs']:g}ep", (r["pretrain_flops"], r["finetune_top1"]),
                        textcoords="offset points", xytext=(3, 3), fontsize=6, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("pretraining compute (FLOPs)")
    ax.set_ylabel("fine-tuned top-1")
    ax.set_title("Fine-tuned top-1 vs pretraining compute (line: best so far)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_tensorboard_images(png_paths: List[str], logdir: str, step: int = 0) -> None:
    """Writes each PNG as an image summary (tag = file name without extension) under `logdir`."""
    import tensorflow as tf

    with storage.staged_dir(logdir) as local:  # TensorFlow's own writer cannot reach every store: uploaded on exit
        writer = tf.summary.create_file_writer(local)
        with writer.as_default():
            for p in png_paths:
                with open(p, "rb") as f:
                    image = tf.image.decode_png(f.read(), channels=4)
                tf.summary.image(os.path.splitext(os.path.basename(p))[0], image[None], step=step)
        writer.flush()
        writer.close()
