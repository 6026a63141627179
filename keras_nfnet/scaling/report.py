"""The analysis step of a sweep: fits, plots and a plain-text report, written into one folder.

`analyze(results, out_dir)` writes
  results.csv            the tidy table (one row per run)
  fits.json              every fitted number with its bootstrap interval
  report.txt             the same numbers for people, plus a check of each of the paper's findings
  *.png                  the figures (see plots.py), also written to TensorBoard when `tensorboard_dir` is given
A fit that the data cannot support (too few frontier cells, say) is reported as skipped with the reason, so a
partial sweep can be analysed while it is still running.
"""
import json
import math
import os
from typing import List, Optional

from keras_nfnet import storage
from keras_nfnet.scaling import fit as fitlib
from keras_nfnet.scaling import plots
from keras_nfnet.scaling.results import RunResult, write_csv


def analyze(results: List[RunResult], out_dir: str, compute: str = "flops", size: str = "params",
            irreducible: bool = False, n_bootstrap: int = 1000, seed: int = 0,
            tensorboard_dir: Optional[str] = None) -> dict:
    fitlib._check_axis("compute", compute, fitlib.COMPUTE_AXES)
    fitlib._check_axis("size", size, fitlib.SIZE_AXES)
    ok = [r for r in results if r.ok]
    if not ok:
        raise ValueError("no finished run with a finite held-out loss to analyse")
    with storage.staged_dir(out_dir) as local:  # a bucket's figures and files are written locally, then uploaded
        return _analyze(results, ok, local, compute, size, irreducible, n_bootstrap, seed, tensorboard_dir)


def _analyze(results, ok, out_dir, compute, size, irreducible, n_bootstrap, seed, tensorboard_dir):
    write_csv(results, os.path.join(out_dir, "results.csv"))

    cells = fitlib.best_per_cell(ok, compute)
    frontier = fitlib.pareto_frontier(cells)
    out = {"compute_axis": compute, "size_axis": size, "n_runs": len(results),
           "n_diverged": len(results) - len(ok), "cells": [_cell_dict(c) for c in cells],
           "frontier": [[c.variant, c.epochs] for c in frontier], "skipped": {}}

    loss_fit = _try(out, "loss_frontier",
                    lambda: fitlib.fit_loss_frontier(ok, compute, irreducible, n_bootstrap, seed)[0])
    alloc = _try(out, "allocation", lambda: fitlib.fit_allocation(ok, compute, size, n_bootstrap, seed))
    lr_fits = fitlib.fit_best_lr(ok, n_bootstrap, seed)
    out["loss_frontier"] = loss_fit.to_dict() if loss_fit else None
    out["allocation"] = ({"size": alloc.size.to_dict(), "epochs": alloc.epochs.to_dict(),
                          "size_share": alloc.size_share, "size_share_ci": alloc.size_share_ci} if alloc else None)
    out["best_lr"] = {v: {**e, "fit": e["fit"].to_dict() if e["fit"] else None} for v, e in lr_fits.items()}
    out["findings"] = check_findings(cells, loss_fit, alloc, lr_fits)
    out["finetuned"] = [[r.run_id, r.variant, r.epochs, getattr(r, compute), r.finetune_accuracy]
                        for r in ok if r.finetune_accuracy is not None]

    pngs = [plots.plot_loss_vs_compute(cells, frontier, loss_fit, compute,
                                       os.path.join(out_dir, "loss_vs_compute.png")),
            plots.plot_loss_vs_lr(cells, os.path.join(out_dir, "loss_vs_lr.png")),
            plots.plot_best_lr(lr_fits, os.path.join(out_dir, "best_lr.png"))]
    if alloc:
        pngs.append(plots.plot_allocation(alloc, compute, os.path.join(out_dir, "optimal_allocation.png")))
    if tensorboard_dir:
        plots.write_tensorboard_images(pngs, tensorboard_dir)
    out["figures"] = [os.path.basename(p) for p in pngs]

    with open(os.path.join(out_dir, "fits.json"), "w", encoding="utf-8") as f:
        json.dump(_json_safe(out), f, indent=1)
    with open(os.path.join(out_dir, "report.txt"), "w", encoding="utf-8") as f:
        f.write(format_report(out, cells))
    return out


def check_findings(cells, loss_fit, alloc, lr_fits) -> dict:
    """Mechanical checks of the paper's findings; each is 'yes', 'no' or 'not resolved' with the evidence."""
    findings = {}
    if loss_fit:
        # "Straight on log-log axes": the quadratic term of log L in log C is not resolved from 0, or the plain
        # power law already fits within 1% of the loss.
        frontier = fitlib.pareto_frontier(cells)
        evidence = f"exponent {_ci(loss_fit)}, rms residual {100 * loss_fit.rmse_log:.2f}% of the loss"
        if len(frontier) < 4:  # any 2 or 3 points look straight enough
            findings["loglog_linear_frontier"] = ("not resolved", evidence + f", only {len(frontier)} frontier points")
        else:
            curv, (lo, hi) = fitlib.loglog_curvature([c.compute for c in frontier], [c.loss for c in frontier])
            straight = (lo <= 0 <= hi or loss_fit.rmse_log < 0.01) and loss_fit.exponent_ci[1] < 0
            findings["loglog_linear_frontier"] = (
                "yes" if straight else "no", evidence + f", log-log curvature {curv:.4f} [{lo:.4f}, {hi:.4f}]")
    for key, f in (("optimal_size_grows", alloc.size if alloc else None),
                   ("optimal_epochs_grow", alloc.epochs if alloc else None)):
        if f is None:
            findings[key] = ("not resolved", "allocation fit skipped")
        else:
            verdict = "yes" if f.exponent_ci[0] > 0 else "no" if f.exponent_ci[1] <= 0 else "not resolved"
            findings[key] = (verdict, f"exponent {_ci(f)}")
    if alloc is not None:
        # The paper: size and epochs grow at about the same rate, i.e. the size exponent is ~half of the two.
        lo, hi = alloc.size_share_ci
        both = findings["optimal_size_grows"][0] == findings["optimal_epochs_grow"][0] == "yes"
        verdict = ("yes" if both and lo <= 0.5 <= hi else "no" if lo > 0.5 or hi < 0.5 else "not resolved")
        findings["size_and_epochs_grow_alike"] = (
            verdict, f"size exponent / (size + epoch exponents) = {alloc.size_share:.2f} [{lo:.2f}, {hi:.2f}] "
                     f"(equal rates: 0.5)")
    # A best LR says something only where the search bracketed it (3+ LRs tried, best not at an edge).
    bracketed = [c for c in cells if len(c.lrs) >= 3 and not c.lr_at_edge]
    smallest = min((c.epochs for c in cells), default=None)
    first_lrs = {c.variant: c.refined_lr for c in cells if c.epochs == smallest}
    if len(first_lrs) >= 2:
        if all(any(b is c for b in bracketed) for c in cells if c.epochs == smallest):
            spread = max(first_lrs.values()) / min(first_lrs.values())
            verdict = "yes" if spread <= 2.0 else "no"
        else:
            verdict = "not resolved"
        findings["best_lr_shared_at_small_budget"] = (
            verdict, f"best LR at {smallest:g} epochs: " + ", ".join(f"{v} {lr:.3g}" for v, lr in first_lrs.items()))
    verdicts, evidence = [], []
    for v, e in lr_fits.items():
        if e["fit"] is None:
            continue
        mine = [c for c in cells if c.variant == v]
        if not all(any(b is c for b in bracketed) for c in mine):
            verdicts.append(None)
            evidence.append(f"{v}: best LR not bracketed at every budget")
            continue
        f = e["fit"]
        verdicts.append(True if f.exponent_ci[1] < 0 else False if f.exponent_ci[0] >= 0 else None)
        evidence.append(f"{v}: exponent {_ci(f)}")
    if verdicts:
        if all(x is True for x in verdicts):
            verdict = "yes"
        elif any(x is True for x in verdicts):
            verdict = "for some models"
        elif all(x is False for x in verdicts):
            verdict = "no"
        else:
            verdict = "not resolved"
        findings["best_lr_falls_with_budget"] = (verdict, "; ".join(evidence))
    return findings


def format_report(out: dict, cells) -> str:
    lines = [f"Scaling-law report: {out['n_runs']} runs ({out['n_diverged']} diverged), compute axis "
             f"'{out['compute_axis']}'. Intervals are 95% pairs-bootstrap percentiles.", ""]
    lines.append("Best run per (model, epoch budget)  [* = on the compute-optimal frontier, ! = best LR at the "
                 "edge of the LRs tried]")
    lines.append(f"{'variant':<10}{'params':>12}{'epochs':>8}{'compute':>12}{'loss':>9}{'best lr':>9}"
                 f"{'refined':>9}  lrs tried")
    on_frontier = {tuple(x) for x in out["frontier"]}
    for c in cells:
        mark = ("*" if (c.variant, c.epochs) in on_frontier else " ") + ("!" if c.lr_at_edge else " ")
        lines.append(f"{c.variant:<10}{c.params:>12,}{c.epochs:>8g}{c.compute:>12.4g}{c.loss:>9.4f}"
                     f"{c.best_lr:>9.3g}{c.refined_lr:>9.3g}  {' '.join(f'{x:g}' for x in c.lrs)} {mark}")
    lines.append("")
    lf = out.get("loss_frontier")
    if lf:
        irr = (f" + {lf['irreducible']:.4g} [{lf['irreducible_ci'][0]:.4g}, {lf['irreducible_ci'][1]:.4g}]"
               if lf["irreducible_ci"] else "")
        lines.append(f"Loss on the frontier: L = {lf['coefficient']:.4g} * C^{lf['exponent']:.4f}{irr}")
        lines.append(f"  exponent 95% interval [{lf['exponent_ci'][0]:.4f}, {lf['exponent_ci'][1]:.4f}], "
                     f"{lf['n_points']} frontier points, rms log residual {lf['rmse_log']:.4f}")
    al = out.get("allocation")
    if al:
        for key, label in (("size", f"optimal {out['size_axis']}"), ("epochs", "optimal epoch budget")):
            f = al[key]
            lines.append(f"{label} ~ C^{f['exponent']:.3f}  95% interval [{f['exponent_ci'][0]:.3f}, "
                         f"{f['exponent_ci'][1]:.3f}]  ({f['n_points']} frontier points)")
        lo, hi = al["size_share_ci"]
        lines.append(f"size share of the allocation, a_size / (a_size + a_epochs) = {al['size_share']:.2f}  "
                     f"95% interval [{lo:.2f}, {hi:.2f}]  (the paper: about 0.5)")
    lines.append("")
    lines.append("Best learning rate vs epoch budget (parabola-refined):")
    for v, e in out["best_lr"].items():
        pairs = ", ".join(f"{ep:g} ep: {lr:.3g}" for ep, lr in zip(e["epochs"], e["refined_lr"]))
        fit = e["fit"]
        tail = (f"  -> lr* ~ epochs^{fit['exponent']:.3f} [{fit['exponent_ci'][0]:.3f}, "
                f"{fit['exponent_ci'][1]:.3f}]") if fit else ""
        lines.append(f"  {v}: {pairs}{tail}")
    lines.append("")
    if out.get("finetuned"):
        lines.append("Fine-tuned accuracy (the paper: at fixed compute it favours slightly larger models trained for "
                     "fewer epochs than the loss-optimal choice):")
        for rid, _, _, comp, acc in sorted(out["finetuned"], key=lambda x: x[3]):
            lines.append(f"  {rid:<24} compute {comp:.4g}  accuracy {acc:.4f}")
        lines.append("")
    for name, reason in out["skipped"].items():
        lines.append(f"Skipped {name}: {reason}")
    lines.append("Paper findings (mechanical checks, see docs/scaling.md for what they mean):")
    for name, (verdict, evidence) in out["findings"].items():
        lines.append(f"  {name:<32} {verdict:<14} {evidence}")
    return "\n".join(lines) + "\n"


def _try(out, name, fn):
    try:
        return fn()
    except ValueError as e:
        out["skipped"][name] = str(e)
        return None


def _ci(f) -> str:
    return f"{f.exponent:.3f} [{f.exponent_ci[0]:.3f}, {f.exponent_ci[1]:.3f}]"


def _json_safe(x):
    """Plain JSON: tuples become lists, numpy scalars floats, NaN/inf null (json.dump would write NaN)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (bool, str, type(None))):
        return x
    if isinstance(x, int):
        return x
    x = float(x)
    return x if math.isfinite(x) else None


def _cell_dict(c) -> dict:
    d = {k: getattr(c, k) for k in ("variant", "epochs", "params", "macs_per_image", "compute", "loss", "best_lr",
                                    "refined_lr", "lrs", "losses", "lr_at_edge")}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
