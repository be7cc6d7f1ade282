"""Hartigan's dip test: the statistic against exact values and a brute-force minimisation, the null
table's calibration on unimodal data, its power on planted clusters, and thinning."""

import math

import numpy as np
import pytest
import torch

from e2abl_lightning.models.e2abl import dip as D
from e2abl_lightning.models.e2abl.dip import dip_pvalue, dip_statistic, dip_test


def _rng(*seed: int) -> np.random.Generator:
    return np.random.default_rng(list(seed))


def _brute_dip(x) -> float:
    """The dip by definition: the least sup distance from the ECDF to a unimodal CDF, one linear program
    per mode position (a mode may sit on an atom, WLOG; the fit may jump there and nowhere else). The
    fit's values at the atoms are the variables; it must be within t of the ECDF's left limit and value
    at each atom, convex (rising slopes) up to the mode and concave (falling slopes) after it."""
    from scipy.optimize import linprog

    u, cnt = np.unique(np.asarray(x, dtype=np.float64), return_counts=True)
    m, n = len(u), cnt.sum()
    upper = np.cumsum(cnt) / n
    lower = upper - cnt / n
    # variables: v_0..v_{m-1} (the fit at each atom; at the mode, its left limit), w (the fit at the mode), t
    w, t = m, m + 1
    rows, rhs = [], []

    def le(terms, bound):
        row = np.zeros(m + 2)
        for j, c in terms:
            row[j] += c
        rows.append(row)
        rhs.append(bound)

    def near(j, target):
        le([(j, 1.0), (t, -1.0)], target)
        le([(j, -1.0), (t, -1.0)], -target)

    def slope(i, j, vi, vj, sign=1.0):
        return [(vj, sign / (u[j] - u[i])), (vi, -sign / (u[j] - u[i]))]

    best = math.inf
    for k in range(m):
        rows.clear()
        rhs.clear()
        for i in range(m):
            near(i, lower[i])
            if i != k:
                near(i, upper[i])
        near(w, upper[k])
        le([(k, 1.0), (w, -1.0)], 0.0)  # the jump at the mode goes up
        le([(0, -1.0)], 0.0)  # the fit starts at or above 0 ...
        for i in range(k - 1):  # ... and is convex up to the mode
            le(slope(i, i + 1, i, i + 1) + slope(i + 1, i + 2, i + 1, i + 2, -1.0), 0.0)
        if k >= 1:
            le(slope(0, 1, 0, 1, -1.0), 0.0)
        var = [w, *range(k + 1, m)]  # concave from the mode on, rising, ending at or below 1
        pos = list(range(k, m))
        for a in range(len(var) - 2):
            le(
                slope(pos[a + 1], pos[a + 2], var[a + 1], var[a + 2])
                + slope(pos[a], pos[a + 1], var[a], var[a + 1], -1.0),
                0.0,
            )
        if len(var) >= 2:
            le(slope(pos[-2], pos[-1], var[-2], var[-1], -1.0), 0.0)
        le([(var[-1], 1.0)], 1.0)
        cost = np.zeros(m + 2)
        cost[t] = 1.0
        res = linprog(cost, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=[(None, None)] * (m + 2), method="highs")
        assert res.status == 0, res.message
        best = min(best, res.fun)
    return best


# ---- the statistic -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0] * 2 + [1.0] * 2, 0.25),  # two equal point masses
        ([0.0] * 50 + [1e6] * 50, 0.25),
        ([0.0] * 3 + [1.0] * 5, 3 / 16),  # two atoms: the smaller one, halved
        ([0.0, 0.0, 0.0, 1.0], 1 / 8),
        ([0.0, 0.0, 1.0, 1.0, 2.0, 2.0], 1 / 6),  # three equal atoms: each non-modal one, halved
        (list(range(4)), 1 / 8),  # evenly spaced: the least dip, 1 / (2n)
        (list(range(7)), 1 / 14),
        (list(range(100)), 1 / 200),
        ([0.0] * 20 + [1.0, 2.0, 3.0, 4.0], 1 / 48),  # a pile is a mode: the tail is a linear ramp
        ([-2.0, -1.0] + [0.0] * 10 + [1.0, 2.0], 1 / 28),
    ],
)
def test_exact_values(values, expected):
    assert dip_statistic(values) == pytest.approx(expected, abs=1e-12)


def test_tight_far_apart_clusters_give_a_quarter():
    rng = _rng(0)
    x = np.r_[rng.normal(0.0, 1e-6, 100), rng.normal(1.0, 1e-6, 100)]
    assert dip_statistic(x) == pytest.approx(0.25, abs=1e-3)


@pytest.mark.parametrize("values", [[], [1.0], [1.0, 2.0], [1.0, 5.0, 9.0], [3.0] * 10])
def test_fewer_than_four_values_or_one_atom_give_zero(values):
    assert dip_statistic(values) == 0.0
    assert dip_test(values) == (0.0, 1.0)


def test_invariant_to_shift_scale_reflection_order_and_input_type():
    rng = _rng(1)
    x = np.r_[rng.normal(0.0, 1.0, 70), rng.normal(3.0, 0.5, 30)]
    d = dip_statistic(x)
    assert 0.0 < d < 0.25
    assert dip_statistic(5.0 + 3.0 * x) == pytest.approx(d, rel=1e-9)
    assert dip_statistic(-x) == pytest.approx(d, rel=1e-9)  # unimodality has no direction
    assert dip_statistic(rng.permutation(x)) == d
    assert dip_statistic(torch.from_numpy(x)) == d
    assert dip_statistic(list(x)) == d
    ties = np.round(x * 2) / 2
    assert dip_statistic(rng.permutation(ties)) == dip_statistic(ties)


def test_rejects_non_finite_values():
    with pytest.raises(ValueError):
        dip_statistic([0.0, 1.0, float("nan"), 2.0, 3.0])


def test_agrees_with_brute_force_definition_on_small_samples():
    rng = _rng(2)
    for trial in range(40):
        n = int(rng.integers(4, 11))
        kind = trial % 4
        if kind == 0:
            x = rng.random(n)
        elif kind == 1:  # heavy ties
            x = rng.integers(0, 4, n).astype(float)
        elif kind == 2:
            x = np.r_[rng.normal(0.0, 1.0, n // 2), rng.normal(6.0, 1.0, n - n // 2)]
        else:  # ties and spread values together
            x = np.r_[np.zeros(n // 2), rng.exponential(1.0, n - n // 2)]
        expected = _brute_dip(x) if np.unique(x).size > 1 else 0.0
        assert dip_statistic(x) == pytest.approx(expected, abs=1e-9), x


@pytest.mark.parametrize("n", [4, 7, 12, 30, 64, 127, 128, 129, 300])
def test_python_and_numpy_paths_give_the_same_dip_bit_for_bit(n, monkeypatch):
    rng = _rng(n)
    for trial in range(24):
        kind = trial % 4
        if kind == 0:
            x = rng.normal(size=n)
        elif kind == 1:  # ties
            x = np.round(rng.normal(size=n), 1)
        elif kind == 2:  # a planted cluster
            x = np.r_[rng.normal(size=n - n // 5), rng.normal(4.0, 0.3, n // 5)]
        else:  # values on a grid: collinear ECDF points
            x = rng.integers(0, 5, n) * 0.1
        x = np.sort(x)
        monkeypatch.setattr(D, "_SMALL", 0)
        vectorised = D._dip_sorted(x)
        monkeypatch.setattr(D, "_SMALL", 10**9)
        assert D._dip_sorted(x) == vectorised, x


# (dip, p-value) from the `diptest` package (0.12.0, `diptest.diptest(x)`, interpolated p-value) on
# the samples built by _reference_sample from the named seed
_DIPTEST_REFERENCE = [
    ("uniform60", 11, 0.03541165325689636, 0.874385490426425),
    ("exponential200", 12, 0.022315825048283916, 0.7435014181323151),
    ("two_blocks300", 13, 0.13231219786870926, 0.0),
    ("ties100", 14, 0.07, 0.0006856936133721181),
    ("near_blocks150", 15, 0.07386839322532077, 4.951394806829157e-06),
    ("triangular1000", 16, 0.026519097084140787, 5.160370358159305e-05),
]


def _reference_sample(name: str, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    if name == "uniform60":
        return r.random(60)
    if name == "exponential200":
        return -np.log(r.random(200))
    if name == "two_blocks300":
        u = r.random((2, 300))
        return u[0] + 3.0 * (u[1] < 0.35)
    if name == "ties100":
        return np.round(8 * r.random(100) ** 2) / 8
    if name == "near_blocks150":
        u = r.random((2, 150))
        return u[0] + 1.3 * (u[1] < 0.5)
    u = r.random((3, 1000))
    return u[0] + u[1] + 4.0 * (u[2] < 0.1)


@pytest.mark.parametrize(("name", "seed", "ref_dip", "ref_p"), _DIPTEST_REFERENCE)
def test_agrees_with_reference_implementation(name, seed, ref_dip, ref_p):
    dip, p = dip_test(_reference_sample(name, seed))
    assert dip == pytest.approx(ref_dip, abs=1e-12)
    if ref_p >= 1e-4:  # two independent simulations of the null, read off differently
        assert p == pytest.approx(ref_p, rel=0.3, abs=0.02)
    else:
        assert p < 1e-4


# ---- the null table ------------------------------------------------------------------------------
def test_table_shape_and_order():
    q = np.asarray(D._NULL_TABLE)
    assert q.shape == (len(D._NULL_N), len(D._NULL_P))
    assert (np.diff(q, axis=1) >= 0).all()  # quantiles rise as the tail probability falls
    assert np.allclose(q[:, 0], 0.5 / np.sqrt(D._NULL_N), atol=1e-5)  # P(dip >= 1/(2n)) = 1
    assert min(D._NULL_P) <= 1e-4


def test_table_regenerates_from_its_simulation():
    n = 50
    row = np.asarray(D._simulate_row(n, 3000, 123))
    table_row = np.asarray(D._NULL_TABLE[D._NULL_N.index(n)])
    assert (np.diff(row) >= 0).all()
    body = [D._NULL_P.index(p) for p in (0.5, 0.2, 0.1, 0.05)]
    np.testing.assert_allclose(row[body], table_row[body], atol=0.02)
    tail = D._NULL_P.index(1e-4)
    np.testing.assert_allclose(row[tail], table_row[tail], atol=0.06)


def test_pvalue_falls_with_dip_and_with_n_and_stays_in_unit_interval():
    dips = np.linspace(0.0, 0.3, 301)
    ns = [4, 5, 6, 7, 9, 11, 12, 13, 17, 30, 45, 64, 100, 250, 499, 500, 501, 1000, 1999, 2000, 2001, 6000]
    p = np.array([[dip_pvalue(d, n) for d in dips] for n in ns])
    assert ((p >= 0.0) & (p <= 1.0)).all()
    assert (np.diff(p, axis=1) <= 0.0).all()
    assert (np.diff(p, axis=0) <= 0.0).all()
    for n in ns:
        assert dip_pvalue(0.5 / n, n) == 1.0  # every sample's dip is at least 1 / (2n)
        assert dip_pvalue(0.0, n) == 1.0
    assert dip_pvalue(0.25, 500) < 1e-12
    assert dip_pvalue(0.1, 3) == 1.0


@pytest.mark.parametrize("n", [30, 200, 2000])
def test_pvalue_resolves_bonferroni_levels(n):
    # the critical dips of 1e-2, 1e-3 and 1e-4 are distinct, and the p-value passes through each level
    crit = []
    for level in (1e-2, 1e-3, 1e-4):
        lo, hi = 0.0, 0.25
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if dip_pvalue(mid, n) >= level else (lo, mid)
        assert dip_pvalue(hi, n) == pytest.approx(level, rel=1e-3)
        crit.append(hi)
    assert crit[0] < crit[1] < crit[2]


# ---- calibration and power -----------------------------------------------------------------------
def _unimodal(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.normal(size=n)
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.0, n)
    if kind == "uniform":
        return rng.random(n)
    # ~30% piled on the floor (the mode) and a skewed, decreasing tail above it
    return np.maximum(rng.exponential(1.0, n) - 0.35, 0.0)


@pytest.mark.parametrize("kind", ["normal", "lognormal", "uniform", "floor_piled"])
@pytest.mark.parametrize("n", [50, 500])
def test_false_alarm_rate_on_unimodal_data(kind, n):
    draws, alpha = 300, 0.05
    rng = _rng(3, n, len(kind))
    rejected = np.mean([dip_test(_unimodal(kind, n, rng))[1] < alpha for _ in range(draws)])
    assert rejected <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / draws)


@pytest.mark.parametrize(("n", "draws"), [(20, 1500), (300, 500)])
def test_uniform_pvalues_are_uniform(n, draws):
    # the least favourable null is exact: the rejection rate is alpha, not far below it
    rng = _rng(4, n)
    p = np.array([dip_test(rng.random(n))[1] for _ in range(draws)])
    for alpha in (0.05, 0.2, 0.5):
        se = math.sqrt(alpha * (1 - alpha) / draws)
        assert abs(np.mean(p < alpha) - alpha) <= 3 * se


def test_floor_pile_is_one_mode():
    x = _unimodal("floor_piled", 2000, _rng(5))
    assert 0.25 < np.mean(x == 0.0) < 0.35
    assert dip_test(x)[1] > 0.05


@pytest.mark.parametrize("rho", [0.2, 0.5])
def test_planted_cluster_is_detected(rho):
    n = 500
    for seed in range(3):
        rng = _rng(6, seed)
        k = int(rho * n)
        x = np.r_[rng.normal(0.0, 1.0, n - k), rng.normal(8.0, 1.0, k)]
        dip, p = dip_test(x)
        assert p < 1e-3
        assert rho / 5 < dip <= rho / 2  # rho / 2 is two point masses; spread clusters dip less


def test_tiny_cluster_in_small_sample_is_not_detected():
    draws = 100
    rejected = 0
    for seed in range(draws):
        rng = _rng(7, seed)
        rejected += dip_test(np.r_[rng.normal(0.0, 1.0, 49), 8.0])[1] < 0.05  # share 0.02
    assert rejected / draws < 0.2


# ---- thinning ------------------------------------------------------------------------------------
def test_thinning_keeps_a_cluster_and_leaves_uniform_alone():
    n, max_n = 6000, 2000
    for seed in range(3):
        rng = _rng(8, seed)
        x = np.r_[rng.normal(0.0, 1.0, 4800), rng.normal(8.0, 1.0, 1200)]
        dip, p = dip_test(x, max_n=max_n)
        assert p < 1e-6
        assert abs(dip - dip_statistic(x)) <= 2.0 / max_n  # the thinned ECDF is within 1 / max_n
        u = rng.random(n)
        dip, p = dip_test(u, max_n=max_n)
        assert p > 0.01
        assert abs(dip - dip_statistic(u)) <= 2.0 / max_n


def test_thinning_tests_at_max_n():
    x = _rng(9).normal(size=3001)
    dip, p = dip_test(x, max_n=500)
    thinned = np.sort(x)[np.round(np.linspace(0, 3000, 500)).astype(int)]
    assert dip == dip_statistic(thinned)
    assert p == dip_pvalue(dip, 500)
    assert dip_test(x[:400], max_n=500) == (dip_statistic(x[:400]), dip_pvalue(dip_statistic(x[:400]), 400))
