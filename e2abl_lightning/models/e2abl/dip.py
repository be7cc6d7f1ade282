"""Hartigan's dip test of unimodality (Hartigan & Hartigan 1985; algorithm AS 217, Hartigan 1985).

The dip of a distribution function F is its sup distance to the closest unimodal distribution function
(convex left of a mode, concave right of it). The algorithm narrows a candidate modal interval: on the
current window it takes the greatest convex minorant (GCM) and least concave majorant (LCM) of the
empirical CDF, moves the window to where they are farthest apart, and charges the dip with the ECDF's
distance to the GCM left of the new window and to the LCM right of it; it stops when the hulls are no
farther apart than the dip found so far. Ties are point masses: one of them may be the mode.

Run ``python -m e2abl_lightning.models.e2abl.dip --table`` to regenerate ``_NULL_TABLE``.
"""

from __future__ import annotations

import argparse
import math
import time
from bisect import bisect_left, bisect_right

import numpy as np
import torch

__all__ = ["dip_pvalue", "dip_statistic", "dip_test"]


def _as_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise ValueError("dip: values must be finite")
    return x


def _hull(u: np.ndarray, y: np.ndarray, a: int, b: int, convex: bool) -> np.ndarray:
    """Vertices (indices, ascending) of the lower convex (or upper concave) hull of ``(u, y)[a..b]``.

    One vectorised pass drops every point on or above (below) the chord of its neighbours; gift
    wrapping then takes, from the left, the farthest survivor of least (greatest) slope, one vectorised
    step per vertex. A random sample's ECDF has few hull vertices, and the pass alone settles a hull
    that holds every point (a smooth, regular sample), which would cost gift wrapping n steps.
    """
    idx = np.arange(a, b + 1)
    if len(idx) <= 2:
        return idx
    x0, x1, x2 = u[a : b - 1], u[a + 1 : b], u[a + 2 : b + 1]
    y0, y1, y2 = y[a : b - 1], y[a + 1 : b], y[a + 2 : b + 1]
    above = (y1 - y0) * (x2 - x0) - (y2 - y0) * (x1 - x0)
    drop = above >= 0.0 if convex else above <= 0.0
    if not drop.any():
        return idx  # every point turns the right way: the hull itself
    keep = np.ones(len(idx), dtype=bool)
    keep[1:-1] = ~drop
    idx = idx[keep]
    us, ys = u[idx], y[idx]
    last = len(idx) - 1
    verts = [0]
    i = 0
    while i < last:
        s = (ys[i + 1 :] - ys[i]) / (us[i + 1 :] - us[i])
        if not convex:
            s = -s
        # last occurrence of the extreme slope: collinear points are not vertices
        i = last - int(np.argmin(s[::-1]))
        verts.append(i)
    return idx[verts]


def _farthest(
    dg: list[float], dh: list[float], g: list[int], h: list[int], a: int, b: int, tol: float
) -> tuple[float, int, int]:
    """The hulls' largest distance ``d`` on the window ``a..b`` (``dg``/``dh``: LCM - GCM at the GCM's
    vertices ``g`` and the LCM's ``h``) and where it lies: the farthest GCM vertex ``ig`` or LCM vertex
    ``ih`` (-1 for the other). The window's ends only count when they beat every inner vertex (a heavy
    atom at an end)."""
    inner_g, inner_h = dg[1:-1], dh[1:-1]
    d_inner = max(inner_g + inner_h, default=-math.inf)
    d_ends = max(dg[0], dg[-1], dh[0], dh[-1])
    if d_inner >= d_ends - tol:
        kg = [k for k, v in enumerate(inner_g) if v >= d_inner - tol]
        kh = [k for k, v in enumerate(inner_h) if v >= d_inner - tol]
        return d_inner, (g[1 + kg[-1]] if kg else -1), (h[1 + kh[-1]] if kh else -1)
    ig = b if max(dg[-1], dh[-1]) >= d_ends - tol else -1
    return d_ends, ig, (a if ig < 0 else -1)


def _dip_counts(u: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Twice the dip, in counts, of the ECDF with distinct atoms ``u`` (sorted); ``lower``/``upper`` are
    the counts strictly below / at or below each atom (the ECDF's left limit and value there)."""
    n = float(upper[-1])
    tol = 1e-10 * n
    mass = upper - lower
    # a unimodal fit jumps only at its mode: every other jump of m counts puts twice the dip at m or more
    dip = float(np.partition(mass, -2)[-2]) if len(mass) > 1 else 0.0
    a, b = 0, len(u) - 1
    while True:
        g = _hull(u, lower, a, b, convex=True)  # GCM of the ECDF's left limits
        h = _hull(u, upper, a, b, convex=False)  # LCM of the ECDF's values
        gx, gy, hx, hy = u[g], lower[g], u[h], upper[h]
        dg = np.interp(gx, hx, hy) - gy  # LCM - GCM at the GCM's vertices
        dh = hy - np.interp(hx, gx, gy)  # ... and at the LCM's
        d, ig, ih = _farthest(dg.tolist(), dh.tolist(), g.tolist(), h.tolist(), a, b, tol)
        if d < dip:
            break
        # the farthest point starts (GCM vertex) or ends (LCM vertex) the next window
        if ig >= ih:
            lo, hi = ig, int(h[np.searchsorted(h, ig)])
        else:
            lo, hi = int(g[np.searchsorted(g, ih, side="right") - 1]), ih
        if lo > a:
            left = slice(a, lo)
            dip = max(dip, float((upper[left] - np.interp(u[left], gx, gy)).max()))
        if hi < b:
            right = slice(hi + 1, b + 1)
            dip = max(dip, float((np.interp(u[right], hx, hy) - lower[right]).max()))
        if (lo, hi) == (a, b):
            break
        a, b = lo, hi
    return dip


#: up to this many distinct values the dip runs on Python floats: numpy's per-call overhead dominates
#: such small arrays (both paths do the same arithmetic in the same order and give the same dip, bit for bit)
_SMALL = 128


def _dip_sorted(x: np.ndarray) -> float:
    n = len(x)
    if n < 4 or x[0] == x[-1]:
        return 0.0
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(x[1:], x[:-1], out=new[1:])
    lower = np.flatnonzero(new)
    upper = np.append(lower[1:], n)
    counts = (x[lower], lower.astype(np.float64), upper.astype(np.float64))
    if len(lower) <= _SMALL:
        return _dip_counts_small(*(c.tolist() for c in counts)) / (2.0 * n)
    return _dip_counts(*counts) / (2.0 * n)


# ---- the same algorithm on Python floats, for small samples ---------------------------------------
def _interp_small(x: float, xp: list[float], fp: list[float]) -> float:
    """``np.interp(x, xp, fp)`` for one point, with numpy's arithmetic."""
    j = bisect_right(xp, x) - 1
    if j < 0:
        return fp[0]
    if j >= len(xp) - 1 or xp[j] == x:
        return fp[j]
    return (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]) * (x - xp[j]) + fp[j]


def _hull_small(u: list[float], y: list[float], a: int, b: int, convex: bool) -> list[int]:
    """:func:`_hull` on Python floats: the same chord pass, then the same gift wrapping."""
    if b - a < 2:
        return list(range(a, b + 1))
    idx = [a]
    for j in range(a + 1, b):
        above = (y[j] - y[j - 1]) * (u[j + 1] - u[j - 1]) - (y[j + 1] - y[j - 1]) * (u[j] - u[j - 1])
        if not (above >= 0.0 if convex else above <= 0.0):
            idx.append(j)
    idx.append(b)
    if len(idx) == b - a + 1:
        return idx
    verts, i, last = [a], 0, len(idx) - 1
    while i < last:
        ui, yi, best, i_next = u[idx[i]], y[idx[i]], math.inf, i + 1
        for k in range(i + 1, last + 1):
            s = (y[idx[k]] - yi) / (u[idx[k]] - ui)
            s = s if convex else -s
            if s <= best:  # the last occurrence of the extreme slope, as in _hull
                best, i_next = s, k
        i = i_next
        verts.append(idx[i])
    return verts


def _dip_counts_small(u: list[float], lower: list[float], upper: list[float]) -> float:
    """:func:`_dip_counts` on Python floats (see there)."""
    tol = 1e-10 * upper[-1]
    mass = sorted(hi - lo for lo, hi in zip(lower, upper, strict=True))
    dip = mass[-2] if len(mass) > 1 else 0.0
    a, b = 0, len(u) - 1
    while True:
        g, h = _hull_small(u, lower, a, b, True), _hull_small(u, upper, a, b, False)
        gx, gy, hx, hy = [u[i] for i in g], [lower[i] for i in g], [u[i] for i in h], [upper[i] for i in h]
        dg = [_interp_small(x, hx, hy) - y for x, y in zip(gx, gy, strict=True)]
        dh = [y - _interp_small(x, gx, gy) for x, y in zip(hx, hy, strict=True)]
        d, ig, ih = _farthest(dg, dh, g, h, a, b, tol)
        if d < dip:
            break
        if ig >= ih:
            lo, hi = ig, h[bisect_left(h, ig)]  # the first LCM vertex at or after ig
        else:
            lo, hi = g[bisect_right(g, ih) - 1], ih  # the last GCM vertex at or before ih
        if lo > a:
            dip = max(dip, max(upper[i] - _interp_small(u[i], gx, gy) for i in range(a, lo)))
        if hi < b:
            dip = max(dip, max(_interp_small(u[i], hx, hy) - lower[i] for i in range(hi + 1, b + 1)))
        if (lo, hi) == (a, b):
            break
        a, b = lo, hi
    return dip


def dip_statistic(values) -> float:
    """Hartigan's dip of the empirical distribution of ``values`` (1-D array or tensor), in [0, 1/4].

    0 for fewer than 4 values or a single point mass; two equal, far-apart point masses give 1/4.
    """
    return _dip_sorted(np.sort(_as_array(values)))


# ---- null distribution ---------------------------------------------------------------------------
#: sample sizes of the null table's rows (beyond the last, sqrt(n) * dip has converged)
_NULL_N = (4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000)
#: upper-tail probabilities P(dip >= q) of the table's columns
_NULL_P = (1.0, 0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01)
_NULL_P = _NULL_P + (5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 1e-5, 1e-6)
#: columns at or below this probability come from the fitted tail, the others are empirical quantiles
_TAIL_P = 0.01
#: the tail is fitted to the simulated survival function between these probabilities
_FIT_P = (0.05, 0.002)
_DRAWS = 30000
_SEED = 20250217

#: quantiles of sqrt(n) * dip of n iid Uniform(0, 1) values: one row per _NULL_N, one column per _NULL_P;
#: _DRAWS samples per n from seed (_SEED, n), empirical above _TAIL_P, the fitted tail below it
# fmt: off
_NULL_TABLE = (
    (  # n=4
        0.25000, 0.25000, 0.25000, 0.25000, 0.25000, 0.25000, 0.25000, 0.25000, 0.25000,
        0.26522, 0.31458, 0.34367, 0.37542, 0.39719, 0.41378, 0.43428, 0.44732, 0.46168,
        0.47893, 0.50083, 0.51678, 0.53225, 0.55204, 0.56655, 0.61229, 0.65484,
    ),
    (  # n=5
        0.22361, 0.22361, 0.22361, 0.22361, 0.22361, 0.22361, 0.24347, 0.27227, 0.30102,
        0.32981, 0.36039, 0.37789, 0.39507, 0.40773, 0.41684, 0.42652, 0.43269, 0.43830,
        0.44596, 0.45589, 0.46327, 0.47052, 0.47995, 0.48695, 0.50954, 0.53117,
    ),
    (  # n=6
        0.20412, 0.20412, 0.20412, 0.20412, 0.22659, 0.25489, 0.27983, 0.30260, 0.32413,
        0.34564, 0.36618, 0.37745, 0.38957, 0.39779, 0.40364, 0.41833, 0.43975, 0.46814,
        0.49574, 0.53003, 0.55456, 0.57804, 0.60770, 0.62921, 0.69590, 0.75674,
    ),
    (  # n=7
        0.18898, 0.18898, 0.19177, 0.21556, 0.24844, 0.27265, 0.29343, 0.31192, 0.32841,
        0.34444, 0.36108, 0.36982, 0.38170, 0.40384, 0.42289, 0.44745, 0.46285, 0.48439,
        0.50689, 0.53518, 0.55563, 0.57535, 0.60042, 0.61872, 0.67594, 0.72868,
    ),
    (  # n=8
        0.17678, 0.17678, 0.20880, 0.23241, 0.26140, 0.28294, 0.30008, 0.31446, 0.32816,
        0.34144, 0.35535, 0.37549, 0.40116, 0.41999, 0.43630, 0.45591, 0.47001, 0.48817,
        0.50787, 0.53280, 0.55091, 0.56844, 0.59082, 0.60721, 0.65871, 0.70646,
    ),
    (  # n=10
        0.15811, 0.19564, 0.22722, 0.24726, 0.27016, 0.28609, 0.29827, 0.30932, 0.32401,
        0.34788, 0.37604, 0.39308, 0.41349, 0.42948, 0.44197, 0.46154, 0.47980, 0.50633,
        0.53196, 0.56405, 0.58717, 0.60941, 0.63761, 0.65815, 0.72219, 0.78100,
    ),
    (  # n=12
        0.14434, 0.20403, 0.23404, 0.25036, 0.26928, 0.28202, 0.29555, 0.31549, 0.33521,
        0.35683, 0.38116, 0.39669, 0.41656, 0.43410, 0.45137, 0.47400, 0.48947, 0.51358,
        0.53728, 0.56710, 0.58865, 0.60945, 0.63589, 0.65518, 0.71555, 0.77121,
    ),
    (  # n=15
        0.12910, 0.21153, 0.23709, 0.24949, 0.26854, 0.28956, 0.30711, 0.32388, 0.34155,
        0.36098, 0.38556, 0.40354, 0.42627, 0.44339, 0.45839, 0.47908, 0.49415, 0.52185,
        0.54724, 0.57911, 0.60209, 0.62423, 0.65235, 0.67284, 0.73682, 0.79567,
    ),
    (  # n=20
        0.11180, 0.21240, 0.23643, 0.25462, 0.27732, 0.29516, 0.31134, 0.32821, 0.34807,
        0.36937, 0.39617, 0.41330, 0.43518, 0.45396, 0.46976, 0.49344, 0.51065, 0.53787,
        0.56438, 0.59763, 0.62161, 0.64469, 0.67399, 0.69533, 0.76195, 0.82320,
    ),
    (  # n=25
        0.10000, 0.21327, 0.24181, 0.25832, 0.28038, 0.29857, 0.31664, 0.33377, 0.35229,
        0.37297, 0.40002, 0.41730, 0.44022, 0.45891, 0.47588, 0.49964, 0.51915, 0.54626,
        0.57350, 0.60763, 0.63222, 0.65590, 0.68594, 0.70782, 0.77609, 0.83882,
    ),
    (  # n=30
        0.09129, 0.21639, 0.24330, 0.25940, 0.28297, 0.30223, 0.31989, 0.33750, 0.35638,
        0.37817, 0.40549, 0.42282, 0.44684, 0.46570, 0.48431, 0.50722, 0.52523, 0.55382,
        0.58103, 0.61515, 0.63975, 0.66344, 0.69352, 0.71543, 0.78384, 0.84674,
    ),
    (  # n=40
        0.07906, 0.21885, 0.24729, 0.26437, 0.28768, 0.30660, 0.32462, 0.34229, 0.36166,
        0.38419, 0.41212, 0.43039, 0.45489, 0.47435, 0.49221, 0.51672, 0.53641, 0.56350,
        0.59110, 0.62572, 0.65068, 0.67472, 0.70525, 0.72749, 0.79693, 0.86078,
    ),
    (  # n=50
        0.07071, 0.22191, 0.25036, 0.26654, 0.29096, 0.30988, 0.32799, 0.34643, 0.36614,
        0.38877, 0.41720, 0.43613, 0.46005, 0.47963, 0.49761, 0.52364, 0.54429, 0.57538,
        0.60568, 0.64356, 0.67079, 0.69696, 0.73011, 0.75422, 0.82931, 0.89814,
    ),
    (  # n=70
        0.05976, 0.22564, 0.25351, 0.27085, 0.29509, 0.31457, 0.33285, 0.35107, 0.37152,
        0.39414, 0.42285, 0.44146, 0.46639, 0.48769, 0.50563, 0.53288, 0.55189, 0.58206,
        0.61168, 0.64877, 0.67547, 0.70116, 0.73374, 0.75746, 0.83139, 0.89927,
    ),
    (  # n=100
        0.05000, 0.22840, 0.25655, 0.27431, 0.29814, 0.31835, 0.33671, 0.35509, 0.37484,
        0.39754, 0.42724, 0.44605, 0.47059, 0.49116, 0.50895, 0.53659, 0.55607, 0.58868,
        0.61930, 0.65759, 0.68513, 0.71161, 0.74517, 0.76959, 0.84565, 0.91542,
    ),
    (  # n=150
        0.04082, 0.23191, 0.25994, 0.27699, 0.30127, 0.32087, 0.33934, 0.35812, 0.37817,
        0.40134, 0.43086, 0.44968, 0.47526, 0.49687, 0.51565, 0.54319, 0.56174, 0.59112,
        0.62003, 0.65631, 0.68247, 0.70766, 0.73965, 0.76296, 0.83573, 0.90266,
    ),
    (  # n=200
        0.03536, 0.23212, 0.26198, 0.27901, 0.30376, 0.32373, 0.34244, 0.36158, 0.38196,
        0.40559, 0.43563, 0.45503, 0.48112, 0.50249, 0.52125, 0.54894, 0.57200, 0.60519,
        0.63789, 0.67871, 0.70803, 0.73617, 0.77181, 0.79771, 0.87829, 0.95207,
    ),
    (  # n=300
        0.02887, 0.23591, 0.26482, 0.28301, 0.30835, 0.32802, 0.34683, 0.36563, 0.38612,
        0.40933, 0.43883, 0.45813, 0.48474, 0.50576, 0.52624, 0.55357, 0.57593, 0.61124,
        0.64447, 0.68595, 0.71573, 0.74431, 0.78050, 0.80679, 0.88858, 0.96344,
    ),
    (  # n=500
        0.02236, 0.23777, 0.26771, 0.28565, 0.31083, 0.33105, 0.34965, 0.36820, 0.38880,
        0.41182, 0.44097, 0.46157, 0.48768, 0.50897, 0.52883, 0.55959, 0.58265, 0.61829,
        0.65253, 0.69522, 0.72585, 0.75523, 0.79240, 0.81940, 0.90332, 0.98008,
    ),
    (  # n=700
        0.01890, 0.23967, 0.26915, 0.28732, 0.31166, 0.33200, 0.35108, 0.37032, 0.39058,
        0.41479, 0.44594, 0.46550, 0.49224, 0.51341, 0.53257, 0.56039, 0.58380, 0.61643,
        0.64905, 0.68981, 0.71911, 0.74726, 0.78292, 0.80885, 0.88959, 0.96359,
    ),
    (  # n=1000
        0.01581, 0.24044, 0.26915, 0.28739, 0.31194, 0.33263, 0.35195, 0.37126, 0.39299,
        0.41720, 0.44737, 0.46814, 0.49435, 0.51706, 0.53670, 0.56576, 0.58662, 0.62129,
        0.65414, 0.69518, 0.72469, 0.75304, 0.78896, 0.81508, 0.89639, 0.97093,
    ),
    (  # n=1500
        0.01291, 0.24168, 0.27014, 0.28873, 0.31366, 0.33392, 0.35329, 0.37187, 0.39353,
        0.41738, 0.44754, 0.46776, 0.49441, 0.51747, 0.53673, 0.56356, 0.58319, 0.61908,
        0.65158, 0.69221, 0.72142, 0.74950, 0.78507, 0.81095, 0.89153, 0.96541,
    ),
    (  # n=2000
        0.01118, 0.24213, 0.27114, 0.28969, 0.31507, 0.33572, 0.35515, 0.37401, 0.39488,
        0.41973, 0.45033, 0.47005, 0.49653, 0.51928, 0.53945, 0.56724, 0.58788, 0.62143,
        0.65340, 0.69340, 0.72219, 0.74987, 0.78497, 0.81051, 0.89011, 0.96315,
    ),
)
# fmt: on


def _simulate_row(n: int, draws: int, seed: int) -> list[float]:
    """Quantiles of sqrt(n) * dip under the uniform null: empirical down to ``_TAIL_P``, below it the
    fit log P(sqrt(n) dip >= x) = a - b x^2 to the simulated upper tail (a Gaussian-type tail, as for
    the Brownian-bridge functional the statistic converges to)."""
    rng = np.random.default_rng([seed, n])
    stat = np.sort([_dip_sorted(np.sort(rng.random(n))) for _ in range(draws)])[::-1] * math.sqrt(n)
    surv = (np.arange(draws) + 0.5) / draws  # plotting position of the descending order statistics
    fit = (surv <= _FIT_P[0]) & (surv >= _FIT_P[1])
    slope, icept = np.polyfit(stat[fit] ** 2, np.log(surv[fit]), 1)
    row = []
    for p in _NULL_P:
        if p >= 1.0:
            q = 0.5 / math.sqrt(n)  # the least dip of n distinct values, 1 / (2n)
        elif p > _TAIL_P:
            q = float(np.quantile(stat, 1.0 - p, method="inverted_cdf"))
        else:
            q = math.sqrt(max(icept - math.log(p), 0.0) / -slope) if slope < 0 else math.inf
        row.append(q)
    # quantiles rise as the tail probability falls, across the splice too
    return np.maximum.accumulate(row).round(5).tolist()


_TABLE_ARRAYS = None
#: below this size the p-value is made to fall with n (see ``dip_pvalue``)
_SMOOTH_N = 12


def _table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    global _TABLE_ARRAYS
    if _TABLE_ARRAYS is None:
        n = np.asarray(_NULL_N, dtype=np.float64)
        # the printed table is rounded: put its atom at the least dip, 1 / (2n), back exactly
        q = np.maximum(np.asarray(_NULL_TABLE, dtype=np.float64), 0.5 / np.sqrt(n)[:, None])
        _TABLE_ARRAYS = (np.log(n), np.log(np.asarray(_NULL_P)), q)
    return _TABLE_ARRAYS


def dip_pvalue(dip: float, n: int) -> float:
    """P(dip of n iid Uniform(0, 1) values >= ``dip``): the uniform is the least favourable unimodal
    null (Hartigan & Hartigan 1985), so this p-value is conservative for every unimodal distribution.

    Read off ``_NULL_TABLE``, quantiles of sqrt(n) * dip simulated for a grid of n: the row is
    interpolated linearly in log n (the last row serves beyond the grid: sqrt(n) * dip converges), then
    log p linearly between the row's quantiles and, past its last (1e-6), along log p = a - b x^2.
    Below ``_SMOOTH_N`` values the null is lumpy (the dip of a handful of points takes few values), and
    the p-value is the largest over sizes n.._SMOOTH_N, so that it falls with n everywhere.
    """
    n = int(n)
    if n < 4 or not dip > 0.0:
        return 1.0
    if n < _SMOOTH_N:
        return max(_pvalue(float(dip), k) for k in range(n, _SMOOTH_N + 1))
    return _pvalue(float(dip), n)


def _pvalue(dip: float, n: int) -> float:
    log_n, log_p, q = _table()
    j = int(np.searchsorted(log_n, math.log(n)))
    if j == 0:
        row = q[0]
    elif j >= len(log_n):
        row = q[-1]
    else:
        w = (math.log(n) - log_n[j - 1]) / (log_n[j] - log_n[j - 1])
        row = (1.0 - w) * q[j - 1] + w * q[j]
    x = math.sqrt(n) * float(dip)
    k = int(np.searchsorted(row, x, side="left"))
    if k == 0:
        return 1.0
    if k == len(row):
        # the fitted Gaussian-type tail through the last two quantiles
        x1, x2 = row[-2], row[-1]
        lp = log_p[-1] + (x * x - x2 * x2) * (log_p[-1] - log_p[-2]) / (x2 * x2 - x1 * x1)
    elif row[k] == x:
        lp = log_p[k]
    else:
        lp = log_p[k - 1] + (x - row[k - 1]) * (log_p[k] - log_p[k - 1]) / (row[k] - row[k - 1])
    return float(min(1.0, math.exp(lp)))


def dip_test(values, max_n: int = 2000) -> tuple[float, float]:
    """``(dip, p-value)`` of Hartigan's dip test of unimodality on ``values`` (see ``dip_pvalue``).

    A sample larger than ``max_n`` is first thinned to ``max_n`` evenly spaced order statistics and
    tested at that size (the returned dip is the thinned sample's). The thinned ECDF is within about
    1 / max_n of the full one, so the dip moves by at most that, while the null at max_n is wider than
    at n, so the p-value is larger than the full sample's: conservative up to that small shift, and
    the hull work is O(max_n) after the sort.
    """
    x = np.sort(_as_array(values))
    if len(x) > max_n:
        x = x[np.round(np.linspace(0.0, len(x) - 1, int(max_n))).astype(np.int64)]
    dip = _dip_sorted(x)
    return dip, dip_pvalue(dip, len(x))


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="simulate _NULL_TABLE and print it")
    parser.add_argument("--draws", type=int, default=_DRAWS)
    parser.add_argument("--seed", type=int, default=_SEED)
    args = parser.parse_args()
    if not args.table:
        parser.error("nothing to do: pass --table")
    start = time.perf_counter()
    rows = []
    for n in _NULL_N:
        rows.append(_simulate_row(n, args.draws, args.seed))
        print(f"# n={n}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"# {args.draws} draws per n, seed {args.seed}, {time.perf_counter() - start:.0f} s")
    print(_format_table(rows))


def _format_table(rows: list[list[float]]) -> str:
    """The table as the Python literal of ``_NULL_TABLE``, nine quantiles a line."""
    lines = ["# fmt: off", "_NULL_TABLE = ("]
    for n, row in zip(_NULL_N, rows, strict=True):
        chunks = [", ".join(f"{v:.5f}" for v in row[i : i + 9]) for i in range(0, len(row), 9)]
        lines.append(f"    (  # n={n}")
        lines.extend(f"        {chunk}," for chunk in chunks)
        lines.append("    ),")
    lines += [")", "# fmt: on"]
    return "\n".join(lines)


if __name__ == "__main__":
    _main()
