"""E2ABL's isolation policy: score -> test -> name -> cut -> recover, each a small pure function.

Every decision rests on a statistic with a stated false-alarm rate on clean data, computed within
one class of one run, so that nothing is an absolute number fitted to a dataset:

* **score**: each head's (shallow heads, main head) per-sample margin, standardised within its class
  by median and MAD, so a class that is merely easy does not stand out; the views tested are these
  scores and each pair's disagreement (restandardised): a patch trigger one shallow head traps and
  another does not, or one the main head fits while the shallow heads place the sample with other
  classes, splits the pair's disagreement where neither score alone is bimodal;
* **test**: Hartigan's dip test of unimodality on each class's scores in each view. A backdoor's
  poisons are a second population inside their target class, fitted far better (by the trap) than
  their classmates; a clean class's scores are one population of whatever shape. A class passes at
  ``alpha / (K * V)`` (Bonferroni over the epoch's tests) with a dip of at least ``min_share / 4``
  (a separated bell-shaped cluster of share rho gives a dip of about rho / 4; two point masses rho / 2)
  and its better-fitted side is the odd one:
  the candidate side of a split is the better-fitted one (in a pair's view, the side some head fits
  better), and a split whose other side the main head mostly gives to other classes is ordinary
  confusion or label noise, not a trap;
* **content** (``reference.py``): where no class passes, the class whose trap-lifted members look like
  every other class (their nearest neighbours outside the class, in a sketch of the inputs) is the
  candidate: poisons that a trigger only shifts inside their class are still found this way;
* **name**: all-to-one: a view where two or more classes pass abstains; a class is named after two
  consecutive epochs as the best-supported passing class (replacing a class named before it) and
  released after two epochs in which no view sees two populations in it (every p-value above 0.5) and
  the content test does not pass for it;
* **cut**: Otsu's split of the named class's scores in its most significant view among those where
  it passes; the odd side is isolated, and stays isolated while the class stays named (the cut moves
  between epochs, and missed poisons re-teach the trigger). Once the class is being cleansed, only
  views that do not read the main head may cut: the cleansing trains the main head against the
  isolated samples, so its scores measure the defense, not the data; where the class passes in no
  such view, nothing is added. The isolated samples then orient the split (its odd side is the one
  holding most of them): the cleansing changes how well the heads fit them, so a side chosen by fit
  can flip to the clean members for an epoch, and the growing set would keep them. Where the named
  class passes no usable view, the lifted set of its content test is the cut;
* **recover**: the main head's prediction EMA without the given class, sharpened: the label an
  isolated sample is trained towards, weighted by its confidence (see ``loss.cleansing_losses``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from e2abl_lightning.models.e2abl.dip import dip_pvalue, dip_test
from e2abl_lightning.models.e2abl.reference import ContentTests, lifted

#: consecutive passing epochs before a class is named, and consecutive quiet epochs before it is released
PERSISTENCE = 2
#: a named class is released when every view's p-value for it is above this (no sign of two populations)
RELEASE_P = 0.5
#: a separated bell-shaped cluster of share rho inside a class gives a dip of about rho / DIP_PER_SHARE
DIP_PER_SHARE = 4
#: the poisoning rate (share of the training set put into one class) the test should see; above it a run says so
RATE_SEEN = 0.05
#: the largest poisoning rate the threat model covers: a set whose test cannot see that trains undefended
RATE_MAX = 0.2
#: a split is ordinary confusion when at most this share of its worse-fitted side is predicted as the class
CONFUSED = 0.5


@dataclass(frozen=True)
class IsolationPolicy:
    """The policy's knobs; the defaults carry to every dataset.

    Args:
        alpha: bound on the chance that a clean epoch passes any class (split over its K x V tests);
            naming a class takes two passing epochs in a row.
        min_share: the smallest share of a class worth isolating as poisoned (an attack-model bound,
            not a fit): a second population smaller than this is never acted on.
        warmup_epochs: epochs trained before the first decision.
    """

    alpha: float = 0.2
    min_share: float = 0.05
    warmup_epochs: int = 1

    def __post_init__(self) -> None:
        for name in ("alpha", "min_share", "warmup_epochs"):
            value, kind = getattr(self, name), int if name == "warmup_epochs" else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind):
                whole = " (whole)" if kind is int else ""
                raise TypeError(f"{name}={value!r} must be a number{whole}, not {type(value).__name__}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha={self.alpha} must be in (0, 1), e.g. 0.2")
        if not 0.0 < self.min_share < 1.0:
            raise ValueError(f"min_share={self.min_share} must be in (0, 1), e.g. 0.05")
        if self.warmup_epochs < 1:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be at least 1")

    @property
    def epochs_to_act(self) -> int:
        """The fewest epochs in which the defense can act: the warm-up, then ``PERSISTENCE`` passing
        decisions before a class is named, then one epoch that cleanses it."""
        return self.warmup_epochs + PERSISTENCE

    def level(self, num_classes: int, num_views: int) -> float:
        """The per-test significance level: Bonferroni over one epoch's tests."""
        return self.alpha / (num_classes * num_views)


# ---- score -----------------------------------------------------------------------------------
def margins(logits: Tensor, given: Tensor) -> Tensor:
    """Margin of the given class over the best other class, ``[..., B, K] -> [..., B]`` (scale-free:
    no loss floor, no saturation)."""
    index = given.expand(logits.shape[:-1]).unsqueeze(-1)
    picked = logits.gather(-1, index).squeeze(-1)
    others = logits.scatter(-1, index, float("-inf")).amax(dim=-1)
    return picked - others


def standardize(score: Tensor, given: Tensor, seen: Tensor, num_classes: int) -> Tensor:
    """Robust z-score of each view's score within its class, ``[V, N]`` (NaN where not ``seen``).

    ``(s - median_c) / (1.4826 * MAD_c)``: the level and spread of a class (how easy it is) divide
    out, so what remains is how a sample sits among its classmates. A loop over K classes.
    """
    z = torch.full_like(score, float("nan"))
    for c in range(num_classes):
        members = seen & (given == c)
        if int(members.sum()) == 0:
            continue
        values = score[:, members]  # [V, M]
        median = values.median(dim=1, keepdim=True).values
        mad = (values - median).abs().median(dim=1, keepdim=True).values * 1.4826
        z[:, members] = (values - median) / mad.clamp(min=1e-6)
    return z


class Views(NamedTuple):
    """What the policy tests: ``z`` ``[V', N]``, and ``fit`` ``[V', N]``, how well the view's heads fit
    each sample, which orients a split (its better-fitted side is the candidate)."""

    z: Tensor
    fit: Tensor


def views(z: Tensor, given: Tensor, num_classes: int) -> Views:
    """The views tested, ``[V, N] -> [V + V (V - 1) / 2, N]``: each head's score, then each pair's
    disagreement ``z_b - z_a`` (``a < b``), restandardised within its class. A head's view is oriented
    by its own score; a pair's by the best score any head gives the sample (a trap is a head that fits
    the poisons far better than their classmates, whichever heads disagree). NaN stays NaN."""
    pairs = _pairs(z.shape[0])
    if not pairs:
        return Views(z, z)
    diff = torch.stack([z[b] - z[a] for a, b in pairs])  # [P, N]
    seen = torch.isfinite(diff).all(dim=0)
    tested = torch.cat([z, standardize(diff.nan_to_num(0.0), given, seen, num_classes)])
    best = z.amax(dim=0, keepdim=True).expand(len(pairs), -1)  # [P, N]
    return Views(tested, torch.cat([z, best]))


def _pairs(num_heads: int) -> list[tuple[int, int]]:
    """The pairs of heads whose disagreement is a view, in the order :func:`views` stacks them."""
    return [(a, b) for a in range(num_heads) for b in range(a + 1, num_heads)]


def view_names(heads: list[str]) -> list[str]:
    """Readable names of the views :func:`views` makes of heads named ``heads`` (the main head last)."""
    return [*heads, *(f"{heads[b]} minus {heads[a]}" for a, b in _pairs(len(heads)))]


def num_tested(num_heads: int) -> int:
    """How many views :func:`views` makes of ``num_heads`` heads (the shallow heads and the main one)."""
    return num_heads + len(_pairs(num_heads))


# ---- test ------------------------------------------------------------------------------------
class ClassTests(NamedTuple):
    """Per class and view: the dip, its p-value, and whether the better-fitted side is the odd one."""

    dip: Tensor  # [K, V] float64
    p: Tensor  # [K, V] float64
    trapped: Tensor  # [K, V] bool


def otsu_upper(values: Tensor) -> Tensor:
    """Mask of the upper cluster of Otsu's two-cluster split of 1-D ``values`` ``[M]`` (M >= 2): the
    split that maximises the between-cluster variance."""
    v, order = values.double().sort()
    m = v.shape[0]
    csum = v.cumsum(0)
    i = torch.arange(1, m, dtype=torch.float64, device=v.device)  # size of the lower cluster
    low, high = csum[:-1] / i, (csum[-1] - csum[:-1]) / (m - i)
    cut = int(torch.argmax(i * (m - i) * (low - high) ** 2)) + 1
    upper = torch.zeros(m, dtype=torch.bool, device=values.device)
    upper[order[cut:]] = True
    return upper


def odd_side(z: Tensor, confused: Tensor, fit: Tensor, anchor: Tensor | None = None) -> tuple[Tensor, bool]:
    """Split one class's view ``z`` ``[M]``; return the odd side's mask and whether it is a trap.

    The candidate is the side the view's heads fit better (higher mean ``fit`` ``[M]``; in a head's own
    view, its upper side). It is the other side, and no trap, when the main head gives most of that
    other side to other classes (``confused`` ``[M]``): confusion or label noise. With ``anchor`` ``[M]``
    (the samples already isolated in a class being cleansed) the odd side is the one holding most of
    them: the cleansing changes how well the heads fit the isolated samples, not which ones they are."""
    upper = otsu_upper(z)
    if anchor is not None and bool(anchor.any()):
        return (upper if int(anchor[upper].sum()) >= int(anchor[~upper].sum()) else ~upper), True
    if 0 < int(upper.sum()) < upper.numel() and float(fit[upper].mean()) < float(fit[~upper].mean()):
        upper = ~upper
    lower = ~upper
    if int(lower.sum()) > 0 and float(confused[lower].float().mean()) > CONFUSED:
        return lower, False
    return upper, True


def class_tests(views: Views, given: Tensor, confused: Tensor, num_classes: int, level: float = 1.0) -> ClassTests:
    """The dip test of every class in every view (:func:`views`; NaN: unseen). ``confused`` ``[N]`` marks
    samples the main head's EMA gives to a class other than their given one. A split's side is judged
    only where ``p < level`` (elsewhere the class cannot pass). Loops over K x V, on the host."""
    z = views.z.detach().cpu().double()
    v = z.shape[0]
    dip = torch.zeros(num_classes, v, dtype=torch.float64)
    p = torch.ones(num_classes, v, dtype=torch.float64)
    trapped = torch.zeros(num_classes, v, dtype=torch.bool)
    finite = torch.isfinite(z).all(dim=0).numpy()
    values, labels = z.numpy(), given.cpu().numpy()
    fits, confused = views.fit.detach().cpu(), confused.cpu()
    for c in range(num_classes):
        members = np.flatnonzero((labels == c) & finite)
        if len(members) < 4:
            continue
        for view in range(v):
            dip[c, view], p[c, view] = dip_test(values[view, members])
            if p[c, view] < level:
                index = torch.from_numpy(members)
                trapped[c, view] = odd_side(z[view, index], confused[index], fits[view, index])[1]
    return ClassTests(dip, p, trapped)


def adjusted_p(p: Tensor) -> Tensor:
    """The tests' p-values ``[K, V]`` times their number, capped at 1: what compares with ``alpha`` (the
    per-test level is ``alpha / (K * V)``, :meth:`IsolationPolicy.level`)."""
    k, v = p.shape
    return (p * k * v).clamp(max=1.0)


# ---- name ------------------------------------------------------------------------------------
def passing(tests: ClassTests, policy: IsolationPolicy) -> Tensor:
    """Classes with a significant, large enough, trapped second population, ``[K, V]`` bool; a view
    in which two or more classes pass abstains (one target: all-to-one)."""
    k, v = tests.p.shape
    ok = (tests.p < policy.level(k, v)) & (tests.dip >= policy.min_share / DIP_PER_SHARE) & tests.trapped
    return ok & (ok.sum(dim=0, keepdim=True) == 1)


def candidate(tests: ClassTests, policy: IsolationPolicy, content: ContentTests | None = None) -> int:
    """This epoch's candidate target: the passing class with the smallest p-value; where no class passes
    the class test, the class with the smallest p-value of the content test (``reference.py``) if it
    passes at ``alpha / (K * H)``; else -1. The content test names one class: an easy class that echoes a
    real target (its members resemble the target's poisons) has far less evidence than the target."""
    ok = passing(tests, policy)
    if bool(ok.any()):
        p = torch.where(ok, tests.p, torch.full_like(tests.p, 2.0))
        return int(p.min(dim=1).values.argmin())
    if content is None:
        return -1
    best = content.p.min(dim=1).values
    return int(best.argmin()) if float(best.min()) < policy.level(*content.p.shape) else -1


class Naming(NamedTuple):
    """The target's hysteresis state, carried from epoch to epoch."""

    target: int  # -1: none named
    candidate: int  # -1: none this epoch
    streak: int  # consecutive epochs the candidate passed
    quiet: int  # consecutive epochs the named target showed one population in every view


def name_target(
    previous: Naming, tests: ClassTests, policy: IsolationPolicy, content: ContentTests | None = None
) -> Naming:
    """Name a class after ``PERSISTENCE`` passing epochs in a row as the candidate, whether or not
    another class is named (the better-supported class replaces it); release a named class after as
    many epochs in which every view's p-value for it is above ``RELEASE_P`` and no head's content test
    passes. Re-examined every epoch. The content test blocks a release only while it passes: its
    boundary likelihood ratio gives a p-value at or under one half whenever the estimated share is above
    one half, which a class whose content labels are spread like the other classes reaches without any
    evidence."""
    cand = candidate(tests, policy, content)
    streak = previous.streak + 1 if cand >= 0 and cand == previous.candidate else int(cand >= 0)
    target, quiet = previous.target, 0
    if target >= 0:
        calm = bool((tests.p[target] > RELEASE_P).all())
        calm &= content is None or bool((content.p[target] >= policy.level(*content.p.shape)).all())
        quiet = previous.quiet + 1 if calm else 0
        if quiet >= PERSISTENCE:
            target, quiet = -1, 0
    if cand >= 0 and cand != target and streak >= PERSISTENCE:
        target, quiet = cand, 0
    return Naming(target, cand, streak, quiet)


# ---- cut -------------------------------------------------------------------------------------
def cut(
    views: Views,
    given: Tensor,
    confused: Tensor,
    tests: ClassTests,
    target: int,
    usable: Tensor,
    anchor: Tensor | None = None,
) -> tuple[Tensor, int]:
    """The odd side of class ``target`` in its most significant ``usable`` view (``[V']`` bool), ``[N]``
    bool, and that view; nothing and -1 where no view is usable. ``anchor`` ``[N]``: the samples already
    isolated, which orient the split while the class is being cleansed (:func:`odd_side`)."""
    if not bool(usable.any()):
        return torch.zeros_like(given, dtype=torch.bool), -1
    view = int(tests.p[target].masked_fill(~usable, 2.0).argmin())
    z, fit = views.z[view], views.fit[view]
    members = (given == target) & torch.isfinite(z)
    out = torch.zeros_like(members)
    if int(members.sum()) >= 2:
        held = anchor[members] if anchor is not None else None
        out[members] = odd_side(z[members], confused[members], fit[members], held)[0]
    return out, view


def content_cut(margins: Tensor, given: Tensor, content: ContentTests, target: int, policy: IsolationPolicy) -> Tensor:
    """Where the class test gives no cut: the lifted set of class ``target`` under the shallow head whose
    content test is most significant, if that test passes, ``[N]`` bool (``margins`` ``[H, N]``)."""
    head = int(content.p[target].argmin())
    if float(content.p[target, head]) >= policy.level(*content.p.shape):
        return torch.zeros_like(given, dtype=torch.bool)
    return lifted(margins[head], given, target)


def witnesses(num_heads: int) -> Tensor:
    """The views that do not read the main head, ``[V']`` bool (in :func:`views`' order, the main head
    last): once a class is being cleansed, the main head is trained against its isolated samples, so a
    view that reads it measures the cleansing, not the data, and only these views may cut."""
    main = num_heads - 1
    return torch.tensor([h != main for h in range(num_heads)] + [b != main for _, b in _pairs(num_heads)])


# ---- recover ---------------------------------------------------------------------------------
def pseudo_labels(pred_ema: Tensor, given: Tensor, temperature: float = 0.5) -> tuple[Tensor, Tensor]:
    """The label an isolated sample is trained towards: the main head's prediction EMA over the classes
    other than the given one, sharpened at ``temperature``, ``[B, K]``, and its confidence
    ``1 - H(q) / log(K - 1)`` ``[B]`` (1 with two classes). The given class is excluded, so a trigger
    the main head has learned cannot teach its target back."""
    k = pred_ema.shape[1]
    q = pred_ema.clamp(min=1e-12).pow(1 / temperature).scatter(1, given.unsqueeze(1), 0.0)
    q = q / q.sum(dim=1, keepdim=True).clamp(min=1e-12)
    if k <= 2:
        return q, torch.ones_like(q[:, 0])
    entropy = -(q * q.clamp(min=1e-12).log()).sum(dim=1)
    return q, (1 - entropy / math.log(k - 1)).clamp(min=0.0, max=1.0)


# ---- what the test can see -------------------------------------------------------------------
def detectable_share(class_sizes: Tensor, policy: IsolationPolicy, num_views: int) -> float:
    """The smallest share of a class (of the median size) whose well-separated second population the
    test names: ``DIP_PER_SHARE`` times the dip the level needs at that size (the test thins to 2,000
    values), and never below ``min_share``. 1.0 or more: too small to isolate anything reliably."""
    sizes = class_sizes[class_sizes > 0]
    if sizes.numel() == 0:
        return float("inf")
    n = min(int(sizes.float().quantile(0.5)), 2000)
    if n < 4:
        return float("inf")
    level = policy.level(int(class_sizes.numel()), num_views)
    lo, hi = 0.0, 1.0  # dip_pvalue falls as the dip grows: bisect for the critical dip
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if dip_pvalue(mid, n) >= level else (lo, mid)
    return max(DIP_PER_SHARE * hi, policy.min_share)


def poisoning_rate(share: float, num_classes: int) -> float:
    """The share of the training set poisoned into one class that makes a share ``share`` of it (poisons
    added to a class of ``1/K`` of the data make ``s = rK / (1 + rK)`` of it); inf from a share of 1."""
    return share / (num_classes * (1 - share)) if share < 1.0 else float("inf")


def can_isolate(share: float, num_classes: int) -> bool:
    """Whether the test sees a poisoning the threat model covers (``RATE_MAX``) on a set whose detectable
    share is ``share``. Where it does not, whatever passes is a false alarm or a sliver of the poisons, and
    cleansing it costs clean accuracy that a small set cannot spare: the run trains as undefended."""
    return poisoning_rate(share, num_classes) <= RATE_MAX


def blind_spot(share: float, num_classes: int) -> str | None:
    """What a warning and the run summary say when the test cannot see an ordinary poisoning: None when
    ``RATE_SEEN`` of the training set poisoned into one class makes a share of it at least ``share``."""
    rate = poisoning_rate(share, num_classes)
    if rate <= RATE_SEEN:
        return None
    if share >= 1.0:
        why = "its classes are too small for the class test"
    else:
        why = (
            f"its class test sees a poisoned population only above {share:.0%} of a class (about {rate:.0%} "
            f"of the training set poisoned into one class; the threat model covers up to {RATE_MAX:.0%})"
        )
    if not can_isolate(share, num_classes):
        return f"E2ABL cannot isolate reliably on this training set: {why}, so it trains as an undefended model"
    return (
        f"E2ABL's class test sees a poisoned population only above {share:.0%} of a class here (about "
        f"{rate:.0%} of the training set poisoned into one class); a smaller poisoning trains as undefended"
    )
