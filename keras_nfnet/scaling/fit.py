"""Scaling-law fits with bootstrap intervals, following the analysis of "ConvNets Match Vision Transformers at Scale".

From a sweep's runs (model x epoch budget x learning rate) this module derives:
  * the best run per (model, epoch budget) cell, i.e. the learning rate tuned away;
  * the compute-optimal frontier: the cells no cheaper-or-equal cell beats on held-out loss;
  * held-out loss vs compute on that frontier as a power law L = a * C^b, optionally plus an irreducible term c;
  * compute-optimal model size (params or MACs) and epoch budget vs compute, as power laws over the frontier;
  * the best learning rate vs epoch budget, per model.

Every fit reports a percentile interval from a pairs bootstrap (resampling the fitted points with replacement).
With the handful of points a sweep gives, these intervals are wide; they are meant to say how much to trust an
exponent, not to be a precise error bar.
"""
import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

COMPUTE_AXES = ("flops", "device_hours")
SIZE_AXES = ("params", "macs_per_image")


@dataclasses.dataclass
class PowerLawFit:
    """y = coefficient * x ** exponent + irreducible, with bootstrap intervals for each parameter."""

    coefficient: float
    exponent: float
    irreducible: float
    coefficient_ci: Tuple[float, float]
    exponent_ci: Tuple[float, float]
    irreducible_ci: Optional[Tuple[float, float]]  # None when the irreducible term was not fitted
    n_points: int
    n_bootstrap: int  # bootstrap resamples that gave a fit (degenerate resamples are dropped)
    rmse_log: float  # root-mean-square residual in log(y)

    def predict(self, x):
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent + self.irreducible

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fit_power_law(x: Sequence[float], y: Sequence[float], irreducible: bool = False, n_bootstrap: int = 1000,
                  ci: float = 0.95, seed: int = 0) -> PowerLawFit:
    """Least-squares fit of log y against log x for y = a * x^b (+ c).

    Residuals are taken in log y because scaling data spans decades and its noise is roughly multiplicative.
    With `irreducible=True` the model is y = a * x^b + c with 0 <= c < min(y), which needs at least 4 points.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and the same length, got shapes {x.shape} and {y.shape}")
    if np.any(~np.isfinite(x)) or np.any(~np.isfinite(y)) or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("power-law fits need finite, strictly positive x and y")
    need = 4 if irreducible else 2
    if len(np.unique(x)) < need:
        raise ValueError(f"a power law{' with an irreducible term' if irreducible else ''} needs at least {need} "
                         f"distinct x values, got {len(np.unique(x))}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    rng = np.random.default_rng(seed)
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2

    if not irreducible:
        b, log_a = _loglog_ols(np.log(x), np.log(y))
        resid = np.log(y) - (log_a + b * np.log(x))
        idx = rng.integers(0, len(x), size=(n_bootstrap, len(x)))
        bb, bla = _loglog_ols(np.log(x)[idx], np.log(y)[idx])
        keep = np.isfinite(bb)
        bb, ba = bb[keep], np.exp(bla[keep])
        return PowerLawFit(
            coefficient=float(np.exp(log_a)), exponent=float(b), irreducible=0.0,
            coefficient_ci=_interval(ba, lo_q, hi_q), exponent_ci=_interval(bb, lo_q, hi_q), irreducible_ci=None,
            n_points=len(x), n_bootstrap=int(keep.sum()), rmse_log=float(np.sqrt(np.mean(resid ** 2))))

    a, b, c = _fit_with_offset(x, y)
    resid = np.log(y) - np.log(a * x ** b + c)
    samples = []
    for _ in range(n_bootstrap):
        i = rng.integers(0, len(x), size=len(x))
        if len(np.unique(x[i])) < need:
            continue
        samples.append(_fit_with_offset(x[i], y[i]))
    s = np.array(samples).reshape(-1, 3)
    return PowerLawFit(
        coefficient=float(a), exponent=float(b), irreducible=float(c),
        coefficient_ci=_interval(s[:, 0], lo_q, hi_q), exponent_ci=_interval(s[:, 1], lo_q, hi_q),
        irreducible_ci=_interval(s[:, 2], lo_q, hi_q), n_points=len(x), n_bootstrap=len(s),
        rmse_log=float(np.sqrt(np.mean(resid ** 2))))


def loglog_curvature(x: Sequence[float], y: Sequence[float], n_bootstrap: int = 1000, ci: float = 0.95,
                     seed: int = 0) -> Tuple[float, Tuple[float, float]]:
    """The quadratic coefficient of log y in log x, with a bootstrap interval: 0 for a straight line on log-log
    axes, positive when the curve flattens (e.g. towards an irreducible loss). Needs at least 4 distinct x."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    if len(np.unique(lx)) < 4:
        raise ValueError(f"a curvature estimate needs at least 4 distinct x values, got {len(np.unique(lx))}")
    lx = lx - lx.mean()  # centred for a well-conditioned fit
    coef = float(np.polyfit(lx, ly, 2)[0])
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        i = rng.integers(0, len(lx), size=len(lx))
        if len(np.unique(lx[i])) >= 3:
            samples.append(np.polyfit(lx[i], ly[i], 2)[0])
    return coef, _interval(samples, 100 * (1 - ci) / 2, 100 * (1 + ci) / 2)


def _loglog_ols(lx, ly):
    """Slope and intercept of ly on lx along the last axis (vectorised over bootstrap resamples)."""
    mx, my = lx.mean(axis=-1, keepdims=True), ly.mean(axis=-1, keepdims=True)
    sxx = ((lx - mx) ** 2).sum(axis=-1)
    sxy = ((lx - mx) * (ly - my)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(sxx > 1e-12, sxy / np.where(sxx > 1e-12, sxx, 1.0), np.nan)
    return slope, my[..., 0] - slope * mx[..., 0]


def _fit_with_offset(x, y):
    from scipy.optimize import least_squares

    lx, ly = np.log(x), np.log(y)
    y_min = float(y.min())

    def residuals(p):
        log_a, b, c = p
        return np.log(np.exp(log_a + b * lx) + c) - ly

    best = None
    # Several starting offsets: the log-space objective has a shallow valley along c.
    for frac in (0.0, 0.5, 0.9, 0.99):
        c0 = frac * y_min
        b0, la0 = _loglog_ols(lx, np.log(np.maximum(y - c0, 1e-12 * y_min)))
        if not np.isfinite(b0):
            continue
        sol = least_squares(residuals, x0=[la0, b0, c0],
                            bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, y_min * (1 - 1e-9)]),
                            x_scale="jac", max_nfev=2000)
        if best is None or sol.cost < best.cost:
            best = sol
    log_a, b, c = best.x
    return float(np.exp(log_a)), float(b), float(c)


def _interval(samples, lo_q, hi_q):
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (float("nan"), float("nan"))
    return (float(np.percentile(samples, lo_q)), float(np.percentile(samples, hi_q)))


# ---------------------------------------------------------------------------------------------------------------
# From runs to cells and the frontier


@dataclasses.dataclass
class Cell:
    """The best learning rate's run for one (model, epoch budget), plus what the LR search saw."""

    variant: str
    epochs: float
    params: int
    macs_per_image: int
    compute: float
    loss: float
    best_lr: float
    refined_lr: float  # vertex of a parabola in (log2 lr, loss) through the best LR and its neighbours
    lrs: List[float]
    losses: List[float]
    lr_at_edge: bool  # the best LR is the smallest or largest one tried: the optimum may lie outside

    def size(self, axis: str) -> float:
        return float(getattr(self, axis))


def _check_axis(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def best_per_cell(results, compute: str = "flops") -> List[Cell]:
    """Groups finished runs by (variant, epochs) and keeps the lowest held-out loss of each group."""
    _check_axis("compute", compute, COMPUTE_AXES)
    groups: Dict[Tuple[str, float], list] = {}
    for r in results:
        if r.ok:
            groups.setdefault((r.variant, float(r.epochs)), []).append(r)
    cells = []
    for (variant, epochs), runs in sorted(groups.items(), key=lambda kv: (kv[1][0].params, kv[0][1])):
        runs = sorted(runs, key=lambda r: r.learning_rate)
        lrs = [float(r.learning_rate) for r in runs]
        losses = [float(r.heldout_loss) for r in runs]
        i = int(np.argmin(losses))
        best = runs[i]
        cells.append(Cell(
            variant=variant, epochs=epochs, params=int(best.params), macs_per_image=int(best.macs_per_image),
            compute=float(getattr(best, compute)), loss=losses[i], best_lr=lrs[i],
            refined_lr=refine_best_lr(lrs, losses), lrs=lrs, losses=losses,
            lr_at_edge=len(lrs) > 1 and i in (0, len(lrs) - 1)))
    if any(c.compute <= 0 for c in cells):
        raise ValueError(f"every run needs a positive '{compute}' to be placed on the compute axis")
    return cells


def refine_best_lr(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The minimum of a parabola in log2(lr) through the best LR and its two neighbours.

    Falls back to the best grid LR at the edge of the grid or when the three points are not convex.
    The vertex is clamped to the neighbours' range so that a flat parabola cannot extrapolate.
    """
    order = np.argsort(lrs)
    lr = np.log2(np.asarray(lrs, dtype=float)[order])
    loss = np.asarray(losses, dtype=float)[order]
    i = int(np.argmin(loss))
    if i == 0 or i == len(lr) - 1:
        return float(2 ** lr[i])
    x, y = lr[i - 1:i + 2], loss[i - 1:i + 2]
    curv, slope, _ = np.polyfit(x, y, 2)
    if curv <= 0:
        return float(2 ** lr[i])
    return float(2 ** np.clip(-slope / (2 * curv), x[0], x[2]))


def pareto_frontier(cells: Sequence[Cell]) -> List[Cell]:
    """The compute-optimal cells, sorted by compute.

    A cell is on the frontier when (1) it has a lower loss than every cell of smaller or equal compute, and
    (2) no other model reaches a lower loss at the same compute, reading that model's loss-vs-compute curve
    (piecewise linear on log-log axes between its epoch budgets) where it covers that compute. Condition (2)
    drops cells that only just beat the cheaper cells, e.g. a large model at its shortest budget sitting above a
    smaller model's curve; such cells lie above the true envelope and would bias the fitted exponents.
    """
    curves: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for variant in dict.fromkeys(c.variant for c in cells):
        mine = sorted((c for c in cells if c.variant == variant), key=lambda c: c.compute)
        curves[variant] = (np.log([c.compute for c in mine]), np.log([c.loss for c in mine]))
    frontier, best = [], math.inf
    for c in sorted(cells, key=lambda c: (c.compute, c.loss)):
        if c.loss >= best:
            continue
        lc = math.log(c.compute)
        beaten = any(lx[0] <= lc <= lx[-1] and len(lx) > 1 and np.interp(lc, lx, ly) < math.log(c.loss)
                     for v, (lx, ly) in curves.items() if v != c.variant)
        if not beaten:
            frontier.append(c)
            best = c.loss
    return frontier


# ---------------------------------------------------------------------------------------------------------------
# The paper's three analyses


@dataclasses.dataclass
class AllocationFit:
    size_axis: str
    size: PowerLawFit  # compute-optimal size vs compute
    epochs: PowerLawFit  # compute-optimal epoch budget vs compute
    frontier: List[Cell]
    # The size exponent's share of both, a / (a + b), with a paired-bootstrap interval: the paper found the two
    # grow at about the same rate (a share of about 0.5).
    size_share: float = math.nan
    size_share_ci: Tuple[float, float] = (math.nan, math.nan)


def exponent_share(x, y_a, y_b, n_bootstrap: int = 1000, ci: float = 0.95,
                   seed: int = 0) -> Tuple[float, Tuple[float, float]]:
    """a / (a + b) for the log-log slopes a of y_a and b of y_b against the same x, with a percentile interval
    from resampling the (x, y_a, y_b) points together (NaN where a + b is ~0)."""
    lx, la, lb = (np.log(np.asarray(v, dtype=float)) for v in (x, y_a, y_b))
    idx = np.random.default_rng(seed).integers(0, len(lx), size=(n_bootstrap, len(lx)))

    def share(ix):
        a, b = _loglog_ols(lx[ix], la[ix])[0], _loglog_ols(lx[ix], lb[ix])[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(np.abs(a + b) > 1e-9, a / (a + b), np.nan)

    samples = share(idx)
    return float(share(np.arange(len(lx)))), _interval(samples[np.isfinite(samples)], 100 * (1 - ci) / 2,
                                                        100 * (1 + ci) / 2)


def fit_loss_frontier(results, compute: str = "flops", irreducible: bool = False, n_bootstrap: int = 1000,
                      seed: int = 0) -> Tuple[PowerLawFit, List[Cell]]:
    """Held-out loss vs compute over the compute-optimal frontier (the paper's Figure 2 line)."""
    frontier = pareto_frontier(best_per_cell(results, compute))
    _need(frontier, 4 if irreducible else 2, "the loss frontier fit")
    fit = fit_power_law([c.compute for c in frontier], [c.loss for c in frontier], irreducible=irreducible,
                        n_bootstrap=n_bootstrap, seed=seed)
    return fit, frontier


def fit_allocation(results, compute: str = "flops", size: str = "params", n_bootstrap: int = 1000,
                   seed: int = 0) -> AllocationFit:
    """Power laws for the compute-optimal model size and epoch budget, read off the frontier cells.

    A sweep has few models, so the optimal size along the frontier is a staircase; the exponent is the slope of
    the staircase on log-log axes. A positive exponent means more compute should go to bigger models (or more
    epochs); in language models both exponents are about 0.5.
    """
    _check_axis("size", size, SIZE_AXES)
    frontier = pareto_frontier(best_per_cell(results, compute))
    _need(frontier, 2, "the optimal-allocation fit")
    cx = [c.compute for c in frontier]
    if len({c.size(size) for c in frontier}) < 2 and len({c.epochs for c in frontier}) < 2:
        raise ValueError("every frontier cell has the same model and epoch budget: the sweep's grid is too "
                         "narrow to fit an allocation law (add larger models or longer budgets)")
    size_fit = fit_power_law(cx, [c.size(size) for c in frontier], n_bootstrap=n_bootstrap, seed=seed)
    epochs_fit = fit_power_law(cx, [c.epochs for c in frontier], n_bootstrap=n_bootstrap, seed=seed)
    share, share_ci = exponent_share(cx, [c.size(size) for c in frontier], [c.epochs for c in frontier],
                                     n_bootstrap=n_bootstrap, seed=seed)
    return AllocationFit(size_axis=size, size=size_fit, epochs=epochs_fit, frontier=frontier, size_share=share,
                         size_share_ci=share_ci)


def fit_best_lr(results, n_bootstrap: int = 1000, seed: int = 0) -> Dict[str, dict]:
    """Per model: the best LR at each epoch budget and a power law lr* = a * epochs^b (when >= 2 budgets).

    The paper saw lr* roughly constant at small budgets and falling at large ones; the fitted exponent
    averages over both regimes, so the per-budget table is returned as well.
    """
    cells = best_per_cell(results)
    out: Dict[str, dict] = {}
    for variant in dict.fromkeys(c.variant for c in cells):
        mine = sorted((c for c in cells if c.variant == variant), key=lambda c: c.epochs)
        entry = {"epochs": [c.epochs for c in mine], "best_lr": [c.best_lr for c in mine],
                 "refined_lr": [c.refined_lr for c in mine], "lr_at_edge": [c.lr_at_edge for c in mine],
                 "fit": None}
        if len(mine) >= 2:
            entry["fit"] = fit_power_law(entry["epochs"], entry["refined_lr"], n_bootstrap=n_bootstrap, seed=seed)
        out[variant] = entry
    return out


def _need(frontier, n, what):
    if len(frontier) < n:
        raise ValueError(f"{what} needs at least {n} compute-optimal (frontier) cells, the sweep gave "
                         f"{len(frontier)}; add epoch budgets or models")
