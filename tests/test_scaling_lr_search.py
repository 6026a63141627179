"""The smart learning-rate search finds the grid's best LR with fewer runs; the grid mode runs everything."""
import math

import numpy as np
import pytest

from keras_nfnet.scaling import lr_search

GRID = [0.05 * 2 ** k for k in range(8)]  # 0.05 .. 6.4


def _search(loss_fn, start, mode="smart"):
    tried = {}
    while True:
        nxt = lr_search.next_learning_rates(GRID, tried, start, mode)
        if not nxt:
            return tried
        for lr in nxt:
            assert lr not in tried
            tried[lr] = loss_fn(lr)


def test_starts_with_the_start_and_its_factor2_neighbours():
    assert lr_search.next_learning_rates(GRID, {}, 0.8) == [0.4, 0.8, 1.6]
    assert lr_search.next_learning_rates(GRID, {}, 0.05) == [0.05, 0.1]  # grid edge
    assert lr_search.next_learning_rates(GRID, {}, 0.7) == [0.4, 0.8, 1.6]  # snapped to the nearest grid LR
    # Bracketed minimum: done.
    assert lr_search.next_learning_rates(GRID, {0.4: 2.1, 0.8: 2.0, 1.6: 2.05}, 0.8) == []
    # Best at the upper end of what was tried: probe one step further up only.
    assert lr_search.next_learning_rates(GRID, {0.4: 2.3, 0.8: 2.2, 1.6: 2.1}, 0.8) == [3.2]
    # Divergence counts as the worst loss.
    assert lr_search.next_learning_rates(GRID, {0.4: 2.3, 0.8: 2.2, 1.6: float("nan")}, 0.8) == []
    assert lr_search.next_learning_rates(GRID, {0.8: None, 1.6: None}, 0.8) == [0.4]


@pytest.mark.parametrize("optimum", [0.07, 0.3, 1.1, 5.0])
def test_smart_search_matches_grid_search_on_a_unimodal_loss(optimum):
    def loss(lr):
        return 2.0 + 0.1 * (math.log2(lr) - math.log2(optimum)) ** 2

    smart = _search(loss, start=0.8)
    full = _search(loss, start=0.8, mode="grid")
    assert len(full) == len(GRID)
    assert lr_search.best_learning_rate(smart) == lr_search.best_learning_rate(full)
    # It walks from the start towards the optimum: start + neighbours + one run per extra grid step.
    steps = abs(lr_search.grid_index(GRID, lr_search.best_learning_rate(full)) - GRID.index(0.8))
    assert len(smart) <= 3 + max(0, steps - 1) + 1


def test_starting_from_the_previous_budget_needs_three_or_four_trials():
    # Best LR falls slowly with the budget (as the paper found): lr*(e) = 1.6 * e^-0.3.
    budgets = [0.25, 0.5, 1, 2, 4, 8]
    finished, total = {}, 0
    for e in budgets:
        start, why = lr_search.start_learning_rate("S0", e, ["S0"], budgets, finished, initial_lr=1.6)
        assert start is not None, why
        opt = 1.6 * e ** -0.3
        tried = _search(lambda lr: 2.0 + 0.1 * (math.log2(lr) - math.log2(opt)) ** 2, start)
        finished[("S0", e)] = lr_search.best_learning_rate(tried)
        best_on_grid = min(GRID, key=lambda lr: abs(math.log2(lr) - math.log2(opt)))
        assert finished[("S0", e)] == best_on_grid
        total += len(tried)
    assert total <= 4 * len(budgets)  # versus 8 per budget for the full grid
    assert total < len(GRID) * len(budgets) / 2


def test_start_learning_rate_sources_and_waiting():
    variants, budgets = ["S0", "S1"], [0.5, 1.0]
    assert lr_search.start_learning_rate("S0", 0.5, variants, budgets, {}, 1.6)[0] == 1.6
    start, why = lr_search.start_learning_rate("S0", 1.0, variants, budgets, {}, 1.6)
    assert start is None and "S0 at 0.5" in why
    assert lr_search.start_learning_rate("S0", 1.0, variants, budgets, {("S0", 0.5): 0.8}, 1.6)[0] == 0.8
    # A model's smallest budget starts from the next smaller model at that budget.
    assert lr_search.start_learning_rate("S1", 0.5, variants, budgets, {("S0", 0.5): 3.2}, 1.6)[0] == 3.2
    # Everything diverged upstream: fall back to the initial LR.
    assert lr_search.start_learning_rate("S1", 0.5, variants, budgets, {("S0", 0.5): None}, 1.6)[0] == 1.6


def test_bad_grids_and_modes_are_named():
    with pytest.raises(ValueError, match="empty"):
        lr_search.check_grid([])
    with pytest.raises(ValueError, match="repeats 0.4"):
        lr_search.check_grid([0.4, 0.8, 0.4])
    with pytest.raises(ValueError, match="positive"):
        lr_search.check_grid([0.0, 0.4])
    with pytest.raises(ValueError, match="not on the sweep's grid"):
        lr_search.next_learning_rates(GRID, {0.3: 2.0}, 0.8)
    with pytest.raises(ValueError, match="mode must be one of"):
        lr_search.next_learning_rates(GRID, {}, 0.8, mode="random")
    assert np.isclose(lr_search.nearest_grid_lr(GRID, 1.0), 0.8)
