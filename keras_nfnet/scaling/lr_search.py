"""The learning-rate search of a sweep: the full factor-2 grid, or the paper's cheaper "smart" search.

"ConvNets Match Vision Transformers at Scale" found that the best learning rate changes slowly with the epoch
budget, so it can be tuned in about two trials: start each (model, budget) from the best LR of the neighbouring
smaller budget and probe only its factor-2 neighbours. Here that becomes a walk along the grid: probe the start
and its two neighbours, then keep probing the untried neighbour of the current best until the best LR has both
grid neighbours tried (a bracketed minimum) or sits at the end of the grid.

Everything here is pure bookkeeping on (lr -> held-out loss) tables, so it is the same whether runs happen one
after another on one machine or as independent cluster jobs.
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

SEARCH_MODES = ("smart", "grid")


def check_grid(grid: Sequence[float]) -> List[float]:
    """The grid sorted ascending; rejects empty, non-positive or repeated learning rates."""
    if not grid:
        raise ValueError("the learning-rate grid is empty; give e.g. [0.2, 0.4, 0.8, 1.6, 3.2]")
    values = sorted(float(v) for v in grid)
    if values[0] <= 0 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"learning rates must be positive and finite, got {list(grid)}")
    for a, b in zip(values, values[1:]):
        if b <= a * (1 + 1e-9):
            raise ValueError(f"the learning-rate grid repeats {a}; give distinct values")
    return values


def grid_index(grid: Sequence[float], lr: float) -> int:
    """Index of `lr` in the sorted grid (relative tolerance 1e-6), or ValueError if it is not a grid value."""
    for i, v in enumerate(grid):
        if abs(v - lr) <= 1e-6 * v:
            return i
    raise ValueError(f"learning rate {lr} is not on the sweep's grid {list(grid)}")


def nearest_grid_lr(grid: Sequence[float], lr: float) -> float:
    """The grid value closest to `lr` on a log scale (a start LR taken from elsewhere may be off-grid)."""
    return min(grid, key=lambda v: abs(math.log(v) - math.log(lr)))


def next_learning_rates(grid: Sequence[float], tried: Mapping[float, Optional[float]], start: float,
                        mode: str = "smart") -> List[float]:
    """The learning rates to run next for one (model, budget), given what was tried; [] when the search is done.

    `tried` maps each learning rate already run to its held-out loss (None, NaN or inf for a diverged run).
    In "grid" mode every grid LR is run. In "smart" mode the search starts at `start` (snapped to the grid) and
    its factor-2 neighbours, then follows the best LR until it is bracketed.
    """
    if mode not in SEARCH_MODES:
        raise ValueError(f"lr search mode must be one of {SEARCH_MODES}, got {mode!r}")
    grid = check_grid(grid)
    done = {grid_index(grid, lr): _as_loss(loss) for lr, loss in tried.items()}
    if mode == "grid":
        return [v for i, v in enumerate(grid) if i not in done]
    # The start and its neighbours come first, whatever order runs finish in (one run at a time re-plans).
    s = grid_index(grid, nearest_grid_lr(grid, start))
    first = [grid[i] for i in (s - 1, s, s + 1) if 0 <= i < len(grid) and i not in done]
    if first:
        return first
    if all(math.isinf(loss) for loss in done.values()):
        # Everything tried diverged: step below the smallest LR tried (larger LRs would diverge too).
        lowest = min(done) - 1
        return [grid[lowest]] if lowest >= 0 else []
    best = min(done, key=lambda i: (done[i], i))
    return [grid[i] for i in (best - 1, best + 1) if 0 <= i < len(grid) and i not in done]


def best_learning_rate(tried: Mapping[float, Optional[float]]) -> Optional[float]:
    """The LR with the lowest finite loss, or None if nothing finished."""
    finite = {lr: _as_loss(loss) for lr, loss in tried.items() if not math.isinf(_as_loss(loss))}
    if not finite:
        return None
    return min(finite, key=lambda lr: (finite[lr], lr))


def start_learning_rate(variant: str, epochs: float, variants: Sequence[str], budgets: Sequence[float],
                        finished: Mapping[Tuple[str, float], Optional[float]],
                        initial_lr: float) -> Tuple[Optional[float], str]:
    """Where the smart search of (variant, epochs) starts, and why; (None, reason) if it must wait.

    From the best LR of the next smaller budget of the same model; for a model's smallest budget, from the best
    LR of the next smaller model at that budget (the paper found the best LR at small budgets ~ the same for
    every model); for the first cell of the sweep, from `initial_lr`.
    `finished` maps each (variant, epochs) whose search is complete to its best LR (None if every run diverged).
    A neighbour still being searched makes this cell wait: starting elsewhere would waste runs.
    """
    budgets = sorted(budgets)
    b = budgets.index(epochs)
    v = list(variants).index(variant)
    if b > 0:
        source = (variant, budgets[b - 1])
    elif v > 0:
        source = (variants[v - 1], epochs)
    else:
        return initial_lr, f"initial_lr {initial_lr:g}"
    if source not in finished:
        return None, f"waiting for the LR search of {source[0]} at {source[1]:g} epochs"
    best = finished[source]
    if best is None:
        return initial_lr, f"initial_lr {initial_lr:g} (every run of {source[0]} at {source[1]:g} epochs diverged)"
    return best, f"best LR {best:g} of {source[0]} at {source[1]:g} epochs"


def search_finished(grid: Sequence[float], tried: Mapping[float, Optional[float]], start: float,
                    mode: str = "smart") -> bool:
    return bool(tried) and not next_learning_rates(grid, tried, start, mode)


def _as_loss(loss) -> float:
    if loss is None:
        return math.inf
    loss = float(loss)
    return loss if math.isfinite(loss) else math.inf


LossTable = Dict[float, Optional[float]]
