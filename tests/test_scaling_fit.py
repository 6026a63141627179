"""The scaling-law fitter recovers known exponents from data drawn from known laws with noise."""
import numpy as np
import pytest

from keras_nfnet.scaling import fit
from keras_nfnet.scaling.results import RunResult


def _run(variant, params, epochs, lr, loss, flops, status="finished"):
    return RunResult(run_id=f"{variant}-e{epochs:g}-lr{lr:g}", variant=variant, params=int(params),
                     macs_per_image=int(params) * 3, epochs=epochs, learning_rate=lr, steps=1, batch_size=1,
                     heldout_loss=loss, flops=flops, device_hours=flops / 1e15, status=status)


# A Chinchilla-form law in (model size N, examples seen D = epochs * corpus size) with compute C = 6 N D.
# Minimising L at fixed C gives N_opt ~ C^(beta / (alpha + beta)), D_opt ~ C^(alpha / (alpha + beta)) and
# L_opt - E ~ C^(-alpha beta / (alpha + beta)): the independent references for the tests below.
ALPHA, BETA, A, B, CORPUS = 0.34, 0.28, 400.0, 410.0, 1e6


def _chinchilla_runs(irreducible=0.0, noise=0.003, seed=0, lrs=(0.4, 0.8, 1.6)):
    rng = np.random.default_rng(seed)
    runs = []
    for n in np.geomspace(1e5, 1e8, 10):
        for epochs in 2.0 ** np.arange(-4, 8):
            d = epochs * CORPUS
            law = irreducible + A * n ** -ALPHA + B * d ** -BETA
            for lr in lrs:  # 0.8 is the best LR everywhere; the others pay a 5% penalty per log2(lr)^2
                loss = law * np.exp(rng.normal(0, noise)) * (1 + 0.05 * np.log2(lr / 0.8) ** 2)
                runs.append(_run(f"m{int(n)}", n, epochs, lr, loss, 6 * n * d))
    return runs


def test_power_law_recovers_exponent_and_interval_covers_truth():
    rng = np.random.default_rng(1)
    x = np.geomspace(1e15, 1e19, 12)
    y = 300.0 * x ** -0.12 * np.exp(rng.normal(0, 0.02, x.size))
    f = fit.fit_power_law(x, y, n_bootstrap=2000)
    assert abs(f.exponent + 0.12) < 0.01
    assert f.exponent_ci[0] < -0.12 < f.exponent_ci[1]
    assert f.exponent_ci[1] - f.exponent_ci[0] < 0.04  # informative, not a vacuous interval
    # Same slope as numpy's own least squares on log-log axes.
    assert f.exponent == pytest.approx(np.polyfit(np.log(x), np.log(y), 1)[0], rel=1e-9)


def test_bootstrap_interval_coverage_is_near_nominal():
    truth, hits, trials = -0.12, 0, 150
    for s in range(trials):
        rng = np.random.default_rng(100 + s)
        x = np.geomspace(1e15, 1e19, 12)
        y = 300.0 * x ** truth * np.exp(rng.normal(0, 0.02, x.size))
        lo, hi = fit.fit_power_law(x, y, n_bootstrap=500, seed=s).exponent_ci
        hits += lo <= truth <= hi
    # Pairs bootstrap with 12 points under-covers slightly; a broken interval would be far from 95%.
    assert 0.85 <= hits / trials <= 0.995


def test_power_law_with_irreducible_term():
    rng = np.random.default_rng(3)
    x = np.geomspace(1e2, 1e6, 16)
    y = 1.5 + 20.0 * x ** -0.3 * np.exp(rng.normal(0, 0.01, x.size))
    f = fit.fit_power_law(x, y, irreducible=True, n_bootstrap=60)
    assert abs(f.exponent + 0.3) < 0.015
    assert abs(f.irreducible - 1.5) < 0.05
    assert f.irreducible_ci[0] < 1.5 < f.irreducible_ci[1]
    # Without the offset the same data looks much flatter: the option matters.
    assert fit.fit_power_law(x, y, n_bootstrap=10).exponent > -0.2


def test_frontier_loss_and_allocation_exponents_match_the_analytic_law():
    runs = _chinchilla_runs(irreducible=0.0)
    loss_fit, frontier = fit.fit_loss_frontier(runs, n_bootstrap=500)
    gamma = ALPHA * BETA / (ALPHA + BETA)
    assert abs(loss_fit.exponent + gamma) < 0.01
    assert loss_fit.exponent_ci[0] < -gamma < loss_fit.exponent_ci[1]

    alloc = fit.fit_allocation(runs, n_bootstrap=500)
    a_n, a_d = BETA / (ALPHA + BETA), ALPHA / (ALPHA + BETA)
    assert abs(alloc.size.exponent - a_n) < 0.05
    assert abs(alloc.epochs.exponent - a_d) < 0.05
    assert alloc.size.exponent_ci[0] < a_n < alloc.size.exponent_ci[1]
    assert alloc.epochs.exponent_ci[0] < a_d < alloc.epochs.exponent_ci[1]
    # The size exponent's share of both: beta / (alpha + beta) for this law (a_n + a_d = 1).
    assert abs(alloc.size_share - a_n) < 0.05 and alloc.size_share_ci[0] < a_n < alloc.size_share_ci[1]
    # MACs are 3x params here, so the MACs exponent is the same.
    assert fit.fit_allocation(runs, size="macs_per_image", n_bootstrap=10).size.exponent == pytest.approx(
        alloc.size.exponent)


def test_frontier_with_irreducible_loss():
    # A wide grid (models 1e3..1e10, epochs 2^-8..2^12) so that in the middle of the compute range the grid
    # brackets the optimal (N, D); at the grid's edges the best available cell is off-optimal by construction.
    rng = np.random.default_rng(0)
    runs = []
    for n in np.geomspace(1e3, 1e10, 22):
        for epochs in 2.0 ** np.arange(-8, 13):
            d = epochs * CORPUS
            loss = (1.7 + 40.0 * n ** -ALPHA + 41.0 * d ** -BETA) * np.exp(rng.normal(0, 0.001))
            runs.append(_run(f"m{int(n)}", n, epochs, 0.8, loss, 6 * n * d))
    middle = [c for c in fit.pareto_frontier(fit.best_per_cell(runs)) if 1e14 <= c.compute <= 1e19]
    f = fit.fit_power_law([c.compute for c in middle], [c.loss for c in middle], irreducible=True, n_bootstrap=40)
    gamma = ALPHA * BETA / (ALPHA + BETA)
    assert abs(f.exponent + gamma) < 0.01
    assert abs(f.irreducible - 1.7) < 0.02
    assert f.irreducible_ci[0] < 1.7 < f.irreducible_ci[1]


def test_best_lr_vs_budget_recovers_a_falling_optimum():
    # lr*(epochs) = 1.6 * epochs^-0.3; loss is quadratic in log2(lr), so the parabola vertex is exact.
    runs = []
    grid = [0.05 * 2 ** k for k in range(8)]
    for epochs in (0.25, 0.5, 1, 2, 4, 8):
        opt = 1.6 * epochs ** -0.3
        for lr in grid:
            runs.append(_run("S0", 1e5, epochs, lr, 2.0 + 0.1 * (np.log2(lr) - np.log2(opt)) ** 2, 1e12 * epochs))
    entry = fit.fit_best_lr(runs, n_bootstrap=200)["S0"]
    np.testing.assert_allclose(entry["refined_lr"], [1.6 * e ** -0.3 for e in entry["epochs"]], rtol=1e-6)
    assert entry["fit"].exponent == pytest.approx(-0.3, abs=1e-6)
    assert not any(entry["lr_at_edge"])


def test_refine_best_lr_matches_numpy_parabola_and_flags_edges():
    lrs = [0.4, 0.8, 1.6]
    losses = [2.2, 2.0, 2.1]
    x = np.log2(lrs)
    c2, c1, _ = np.polyfit(x, losses, 2)
    assert fit.refine_best_lr(lrs, losses) == pytest.approx(2 ** (-c1 / (2 * c2)))
    assert fit.refine_best_lr([0.4, 0.8, 1.6], [1.0, 2.0, 3.0]) == 0.4  # edge: no extrapolation
    cells = fit.best_per_cell([_run("S0", 1e5, 1, lr, l, 1e12) for lr, l in zip(lrs, [1.0, 2.0, 3.0])])
    assert cells[0].lr_at_edge and cells[0].best_lr == 0.4


def test_pareto_frontier_matches_brute_force():
    rng = np.random.default_rng(7)
    cells = [fit.Cell("v", 1.0, 1, 1, float(c), float(l), 1.0, 1.0, [1.0], [float(l)], False)
             for c, l in zip(rng.permutation(40) + 1, rng.uniform(1, 5, 40))]
    expected = {id(c) for c in cells if all(o.loss > c.loss for o in cells if o.compute <= c.compute and o is not c)}
    assert {id(c) for c in fit.pareto_frontier(cells)} == expected


def test_diverged_runs_are_ignored_and_bad_input_is_named():
    runs = _chinchilla_runs()[:60]
    runs.append(_run("m100000", 1e5, 0.0625, 3.2, float("nan"), 6e11 * 0.0625 * 1e6 / 1e6, status="diverged"))
    cells = fit.best_per_cell(runs)
    assert all(3.2 not in c.lrs for c in cells)
    with pytest.raises(ValueError, match="positive"):
        fit.fit_power_law([1, 2, 3], [1, -1, 2])
    with pytest.raises(ValueError, match="distinct x"):
        fit.fit_power_law([1, 2, 3], [1, 2, 3], irreducible=True)
    with pytest.raises(ValueError, match="compute must be one of"):
        fit.best_per_cell(runs, compute="tpu_hours")
    with pytest.raises(ValueError, match="at least 2 compute-optimal"):
        fit.fit_loss_frontier([_run("S0", 1e5, 1, 0.4, 2.0, 1e12)])


def test_frontier_drops_cells_above_another_models_curve():
    # Small model: (C=1, L=4), (C=4, L=2). Big model's first cell at C=2 has L=3.5: it beats every cheaper cell
    # (4.0) but the small model's curve reaches exp(interp) = 2.83 at C=2, so it is not compute-optimal.
    def cell(v, c, l):
        return fit.Cell(v, 1.0, 1, 1, c, l, 1.0, 1.0, [1.0], [l], False)

    cells = [cell("small", 1.0, 4.0), cell("small", 4.0, 2.0), cell("big", 2.0, 3.5), cell("big", 8.0, 1.5)]
    frontier = fit.pareto_frontier(cells)
    assert [(c.variant, c.compute) for c in frontier] == [("small", 1.0), ("small", 4.0), ("big", 8.0)]
    assert np.exp(np.interp(np.log(2.0), np.log([1.0, 4.0]), np.log([4.0, 2.0]))) < 3.5


def test_loglog_curvature_separates_straight_from_bending_curves():
    rng = np.random.default_rng(5)
    x = np.geomspace(1e12, 1e18, 10)
    straight = 300.0 * x ** -0.12 * np.exp(rng.normal(0, 0.005, x.size))
    curv, (lo, hi) = fit.loglog_curvature(x, straight, n_bootstrap=300)
    assert lo <= 0 <= hi and abs(curv) < 0.002
    bending = 2.0 + 300.0 * x ** -0.2  # flattens towards an irreducible 2.0
    curv, (lo, hi) = fit.loglog_curvature(x, bending, n_bootstrap=300)
    # Independent reference: numpy's quadratic fit of the noise-free curve.
    lx = np.log(x) - np.log(x).mean()
    assert curv == pytest.approx(np.polyfit(lx, np.log(bending), 2)[0]) and lo > 0
