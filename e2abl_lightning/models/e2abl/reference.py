"""The content test: does what the trap lifts in a class look like the other classes?

The class test (:mod:`~e2abl_lightning.models.e2abl.policy`) finds poisons that form a second
population inside their class. Some triggers (a blend, a learned warp of the whole input) only *shift*
the poisons inside their class's scores, and no unimodality test sees them. They still stand out
against the other classes: the trap fits them better than nearly every sample of every other class.
An easy clean class does too, so standing out does not name a target by itself. What tells them apart
is the content. All-to-one poisons are samples of the other classes with a trigger; a clean class's
best-fitted members are its most typical ones. So:

* **content reference**: each sample's content label is the majority label of its nearest neighbours
  among the samples of the *other* classes, in a fixed random sketch of the raw inputs (computed once,
  from the first epoch's inputs; the model's features would carry the trigger). A poison's content
  label is its source class; a clean member's is the class it most resembles.
* **lifted set**: a shallow head's members of class ``c`` whose margin is above the ``LIFT_QUANTILE``
  quantile of that head's margins over every other class.
* **test**: the lifted set's content labels are a mixture: a share ``lambda`` spread like the other
  classes' sizes (all-to-one poisons are drawn from every other class in proportion), the rest like
  the content labels of the class's members that are not lifted (a distribution estimated with the
  share). The null is that at most half of the lifted set is such poisons (``lambda <= 1/2``): a
  likelihood-ratio test, one-sided, at the policy's level over the ``K x H`` tests. An easy class's
  lifted members point at one or two similar classes, like the rest of their class, and stay far
  below one half.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

#: width of the fixed random sketch of the inputs in which neighbours are found
SKETCH_DIM = 64
#: neighbours whose majority label is a sample's content label
NEIGHBOURS = 10
#: a member is lifted when its margin is above this quantile of the head's margins over the other classes
LIFT_QUANTILE = 0.95
#: the null: at most this share of the lifted set is all-to-one poisons
NULL_SHARE = 0.5
#: the fewest lifted and non-lifted members a class needs for the test
MIN_MEMBERS = 5


def sketch_matrix(in_features: int, dim: int = SKETCH_DIM, seed: int = 0) -> Tensor:
    """A fixed Gaussian projection ``[in_features, dim]`` from its own generator (the run's random
    stream is untouched), scaled so that distances keep their size (Johnson-Lindenstrauss)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(in_features, dim, generator=generator) / math.sqrt(dim)


@torch.no_grad()
def content_labels(sketch: Tensor, given: Tensor, num_classes: int, k: int = NEIGHBOURS) -> Tensor:
    """Each sample's content label ``[N]``: the majority given label of its ``k`` nearest samples of the
    other classes (Euclidean, in ``sketch`` ``[N, D]``); -1 where ``given`` is -1 (never seen)."""
    out = torch.full_like(given, -1)
    seen = given >= 0
    pool, labels = sketch[seen].float(), given[seen]
    if labels.numel() < 2 or int(labels.unique().numel()) < 2:
        return out
    norms = (pool * pool).sum(dim=1)
    found = torch.empty_like(labels)
    chunk = max(1, 2**25 // labels.numel())  # rows per block of distances: about 128 MiB
    for start in range(0, labels.numel(), chunk):
        rows = slice(start, start + chunk)
        distance = norms[rows, None] + norms[None] - 2 * pool[rows] @ pool.T
        distance.masked_fill_(labels[None] == labels[rows, None], float("inf"))  # only the other classes
        near = distance.topk(min(k, labels.numel()), dim=1, largest=False)
        votes = torch.nn.functional.one_hot(labels[near.indices], num_classes)
        votes = votes.masked_fill(near.values.isinf().unsqueeze(2), 0).sum(dim=1)  # [B, K]
        found[rows] = votes.argmax(dim=1)
    out[seen] = found
    return out


def lifted(margin: Tensor, given: Tensor, c: int, quantile: float = LIFT_QUANTILE) -> Tensor:
    """Members of class ``c`` whose ``margin`` ``[N]`` is above the ``quantile`` of the margins of the
    other classes' samples, ``[N]`` bool (``given`` -1: unseen, never lifted nor counted)."""
    others = margin[(given >= 0) & (given != c)].float()
    if others.numel() == 0:
        return torch.zeros_like(given, dtype=torch.bool)
    return (given == c) & (margin.float() > torch.quantile(others, quantile))


def _mixture_fit(lifted: Tensor, rest: Tensor, spread: Tensor, cap: float, iterations: int) -> tuple[float, float]:
    """EM for ``lifted ~ s * spread + (1 - s) * R``, ``rest ~ R``, with ``s <= cap`` and ``R`` free
    (add-half smoothed): the share ``s`` and the log-likelihood at the fit."""
    k = spread.numel()
    counts = torch.bincount(rest, minlength=k).double()
    a = spread.double()[lifted]
    share, weight = min(NULL_SHARE, cap), torch.ones_like(a)  # R starts from the rest alone
    for _ in range(iterations):
        other = counts + torch.bincount(lifted, weights=1 - weight, minlength=k) + 0.5
        other = (other / other.sum())[lifted]
        weight = share * a / (share * a + (1 - share) * other).clamp(min=1e-300)
        share = min(float(weight.mean()), cap)
    r = counts + torch.bincount(lifted, weights=1 - weight, minlength=k) + 0.5
    r = r / r.sum()
    loglik = r[rest].log().sum() + (share * a + (1 - share) * r[lifted]).clamp(min=1e-300).log().sum()
    return share, float(loglik)


def mixture_pvalue(lifted: Tensor, rest: Tensor, spread: Tensor, iterations: int = 200) -> tuple[float, float]:
    """The share ``s`` of the ``lifted`` content labels ``[n]`` drawn from ``spread`` ``[K]`` (the other
    classes by size) rather than from the distribution ``R`` of the class's other members' labels
    (``rest`` ``[m]``), and the p-value of ``s <= NULL_SHARE``: a likelihood-ratio test in which ``R`` is
    estimated under each hypothesis from the rest and the lifted set's unexplained part (so a class of a
    few dozen members, whose ``R`` is poorly known, does not pass on that uncertainty); the null's
    boundary gives half a chi-square with one degree of freedom."""
    share, full = _mixture_fit(lifted, rest, spread, 1.0, iterations)
    if share <= NULL_SHARE:
        return share, 1.0
    _, null = _mixture_fit(lifted, rest, spread, NULL_SHARE, iterations)
    statistic = max(0.0, 2 * (full - null))
    return share, 0.5 * math.erfc(math.sqrt(statistic / 2))


class ContentTests(NamedTuple):
    """Per class and shallow head: the estimated poisoned share of the lifted set and its p-value."""

    share: Tensor  # [K, H] float64
    p: Tensor  # [K, H] float64


def content_tests(margins: Tensor, given: Tensor, content: Tensor, num_classes: int) -> ContentTests:
    """The content test of every class under every shallow head (``margins`` ``[H, N]``; ``content``
    ``[N]`` from :func:`content_labels`). Loops over K x H, on the host. With two classes it tests
    nothing (share 0, p-value 1): the content label carries no information there, and a boundary
    likelihood ratio on identical distributions would still sit just under one half."""
    margins, given, content = margins.detach().cpu(), given.cpu(), content.cpu()
    h = margins.shape[0]
    share = torch.zeros(num_classes, h, dtype=torch.float64)
    p = torch.ones(num_classes, h, dtype=torch.float64)
    if num_classes < 3:  # every sample's content label is the one other class: nothing to tell apart
        return ContentTests(share, p)
    known = (given >= 0) & (content >= 0)
    sizes = torch.bincount(given[known], minlength=num_classes).double()
    for c in range(num_classes):
        spread = sizes.clone()
        spread[c] = 0
        if float(spread.sum()) == 0:
            continue
        spread /= spread.sum()
        for head in range(h):
            up = lifted(margins[head], given, c) & known
            down = (given == c) & known & ~up
            if int(up.sum()) < MIN_MEMBERS or int(down.sum()) < MIN_MEMBERS:
                continue
            share[c, head], p[c, head] = mixture_pvalue(content[up], content[down], spread)
    return ContentTests(share, p)
