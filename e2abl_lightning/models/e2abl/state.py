"""Per-sample state bank of E2ABL: decided state in persistent buffers, epoch sums in the others.

Under DDP every rank scatter-adds into its own accumulators, all-reduces them at the epoch end and
takes the same deterministic decision (stable sort on score, then index), so no broadcast is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from e2abl_lightning.metrics.functional import isolation_precision_recall

#: ``all_reduce(tensor, op)`` in place, ``op`` in {"sum", "max"}.
AllReduce = Callable[[Tensor, str], None]

_PERSISTENT = {
    "score_sum": ("h", "n"),
    "score_epochs": ("n",),
    "given": ("n",),
    "pred_ema": ("n", "k"),
    "flagged": ("n",),
    "isolated": ("n",),
    "ascend": ("n",),
    "recovered": ("n",),
    "confident": ("n",),
    "flag_count": ("n",),
    "first_flagged": ("n",),
}
_ACCUMULATORS = {
    "acc_loss": ("h", "n"),
    "acc_count": ("n",),
    "acc_prob": ("n", "k"),
    "acc_given": ("n",),
    "oracle_poisoned": ("n",),
    "oracle_true": ("n",),
}
_DTYPES = {
    "given": torch.long,
    "flagged": torch.bool,
    "isolated": torch.bool,
    "ascend": torch.bool,
    "recovered": torch.long,
    "confident": torch.bool,
    "flag_count": torch.long,
    "first_flagged": torch.long,
    "acc_given": torch.long,
    "oracle_poisoned": torch.long,
    "oracle_true": torch.long,
}
_FILL = {"given": -1, "recovered": -1, "first_flagged": -1, "acc_given": -1, "oracle_poisoned": -1, "oracle_true": -1}
#: ``target_source``: how the suspected target was named, 0 by the flagged set's label share, 1 by the
#: main head's class separation (``clean_label_separation``), 2 by the spread of the main head's
#: confusions (``min_confusion_spread``), 3 by the shallow and main heads' disagreement on its members'
#: ranking (``max_rank_agreement``), -1 not yet
_SCALARS = (
    "suspected_target",
    "candidate_target",
    "candidate_streak",
    "head_choice",
    "epochs_decided",
    "target_source",
)
_SUM = ("acc_loss", "acc_count", "acc_prob")
#: oracle keys (metrics only) are kept across epochs: a sample not seen this epoch keeps its key
_ORACLE = ("oracle_poisoned", "oracle_true")
_MAX = ("acc_given", "oracle_poisoned", "oracle_true")
#: the least share of a class, estimated from its members' runner-up classes, that must look like label
#: noise from every class before the rank-agreement test names it
MIN_NOISE_SHARE = 1 / 3


@dataclass
class DecisionConfig:
    """The isolation rule's knobs (documented on the LightningModule)."""

    warmup_epochs: int = 3
    isolation_ratio: float = 0.15
    score: str = "running_mean"
    target_patience: int = 2
    cleanse_scope: str = "suspected_target"
    ema_momentum: float = 0.7
    recovery_threshold: float = 0.9
    split_min_gap: float = 1.0
    head_selection: str = "separation"
    fixed_head: int | None = None
    min_label_share: float = 0.0
    clean_label_separation: float = 0.0
    min_head_contrast: float = 0.0
    min_confusion_spread: float = 0.0
    max_rank_agreement: float = 0.0


class IsolationState(nn.Module):
    """Per-sample state for ``num_samples`` training samples, ``num_classes`` classes, ``num_heads`` heads."""

    def __init__(self, num_samples: int = 0, num_classes: int = 2, num_heads: int = 1) -> None:
        super().__init__()
        for name in _SCALARS:
            self.register_buffer(name, torch.tensor(-1 if name != "candidate_streak" else 0))
        self.epochs_decided.fill_(0)
        self.resize(num_samples, num_classes, num_heads)

    @property
    def num_samples(self) -> int:
        return int(self.score_epochs.shape[0])

    def resize(self, num_samples: int, num_classes: int, num_heads: int) -> None:
        """(Re)allocate every per-sample buffer, clearing it."""
        sizes = {"n": num_samples, "k": num_classes, "h": num_heads}
        device = self.suspected_target.device
        for table, persistent in ((_PERSISTENT, True), (_ACCUMULATORS, False)):
            for name, dims in table.items():
                dtype = _DTYPES.get(name, torch.float32)
                value = torch.full([sizes[d] for d in dims], _FILL.get(name, 0), dtype=dtype, device=device)
                self.register_buffer(name, value, persistent=persistent)

    def load_state_dict_sizes(self, state_dict: dict[str, Tensor], prefix: str) -> None:
        """Resize to the shapes stored in a checkpoint before it is loaded."""
        key = prefix + "score_sum"
        if key in state_dict:
            h, n = state_dict[key].shape
            self.resize(n, state_dict[prefix + "pred_ema"].shape[1], h)

    # ---- during the epoch ---------------------------------------------------------------------
    def reset_accumulators(self) -> None:
        for name in _ACCUMULATORS:
            if name not in _ORACLE:
                getattr(self, name).fill_(_FILL.get(name, 0))

    @torch.no_grad()
    def accumulate(self, index: Tensor, shallow_loss: Tensor, probs: Tensor, given: Tensor) -> None:
        """Add one batch: ``index`` ``[B]``, ``shallow_loss`` ``[H, B]``, ``probs`` ``[B, K]``, ``given`` ``[B]``."""
        self.acc_loss.index_add_(1, index, shallow_loss.float())
        self.acc_count.index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
        self.acc_prob.index_add_(0, index, probs.float())
        self.acc_given.scatter_reduce_(0, index, given, "amax")

    @torch.no_grad()
    def record_oracle(self, index: Tensor, poisoned: Tensor, original_target: Tensor) -> None:
        """Oracle keys of ``index`` (all samples at once from a dataset that has them, else batch by batch),
        for isolation metrics only: the decision never reads them."""
        self.oracle_poisoned.scatter_reduce_(0, index, poisoned.long(), "amax")
        self.oracle_true.scatter_reduce_(0, index, original_target.long(), "amax")

    def sync_(self, all_reduce: AllReduce) -> None:
        """All-reduce the epoch accumulators across ranks (sum, or max for labels)."""
        for name in _SUM:
            all_reduce(getattr(self, name), "sum")
        for name in _MAX:
            all_reduce(getattr(self, name), "max")

    # ---- at the epoch end -------------------------------------------------------------------------
    def scores(self, mode: str) -> Tensor:
        """Isolation score per head, ``[H, N]`` (lower = more suspicious; unseen samples +inf)."""
        if mode == "epoch":
            score = self.acc_loss / self.acc_count.clamp(min=1)
            seen = self.acc_count > 0
        else:
            score = self.score_sum / self.score_epochs.clamp(min=1)
            seen = self.score_epochs > 0
        return torch.where(seen, score, torch.full_like(score, float("inf")))

    @torch.no_grad()
    def decide(self, epoch: int, cfg: DecisionConfig) -> dict[str, float]:
        """Fold the epoch in and take the deterministic decision; returns values to log."""
        seen = self.acc_count > 0  # [N]
        mean_loss = self.acc_loss / self.acc_count.clamp(min=1)  # [H, N]
        self.score_sum += torch.where(seen, mean_loss, torch.zeros_like(mean_loss))
        first = seen & (self.score_epochs == 0)
        self.score_epochs += seen.float()
        self.given.copy_(torch.where(seen, self.acc_given, self.given))
        probs = self.acc_prob / self.acc_count.clamp(min=1).unsqueeze(1)  # [N, K]
        m = cfg.ema_momentum
        ema = torch.where(first.unsqueeze(1), probs, m * self.pred_ema + (1 - m) * probs)
        self.pred_ema.copy_(torch.where(seen.unsqueeze(1), ema, self.pred_ema))
        if epoch + 1 < cfg.warmup_epochs:
            return {}

        score = self.scores(cfg.score)  # [H, N]
        valid = self.given >= 0
        k = int(round(cfg.isolation_ratio * int(valid.sum())))
        shares, majors, flags, separations, label_counts = [], [], [], [], []
        log_score = torch.log(score.clamp(min=1e-12))  # [H, N]
        for h in range(score.shape[0]):
            order = torch.sort(score[h], stable=True).indices[:k]  # ties -> lower index
            flag = torch.zeros_like(self.flagged)
            flag[order] = True
            counts = torch.bincount(self.given[order].clamp(min=0), minlength=self.pred_ema.shape[1])
            label_counts.append(counts)
            shares.append(float(counts.max()) / max(k, 1))
            majors.append(int(counts.argmax()))
            flags.append(flag)
            # how far below the typical sample the flagged set sits: a trap fits its catch near-perfectly
            separations.append(float(log_score[h][valid].median() - log_score[h][order].mean()))
        criterion = separations if cfg.head_selection == "separation" else shares
        if cfg.head_selection == "label_share" and int(self.suspected_target) >= 0:
            # once a target is suspected, the head whose flagged set holds the most samples given that
            # label: an easy clean class dominating another head's flagged set must not take the choice
            criterion = [float(counts[int(self.suspected_target)]) for counts in label_counts]
        head = (
            cfg.fixed_head if cfg.fixed_head is not None else max(range(len(shares)), key=lambda i: (criterion[i], -i))
        )
        self.head_choice.fill_(head)
        self.flagged.copy_(flags[head])

        major = majors[head] if shares[head] >= cfg.min_label_share else -1  # -1: no candidate this epoch
        contrast = head_contrast(score, head, flags[head] & (self.given == majors[head]))
        if major >= 0 and contrast < cfg.min_head_contrast:
            major = -1  # the other heads find the same samples easy: an easy clean class, not a trap
        main_loss = main_head_loss(probs, self.given)  # [N]
        separations_by_class = class_separations(main_loss, self.given, seen, probs.shape[1])  # [K]
        best = int(torch.argmax(separations_by_class))
        # a class whose members split into a near-zero-loss cluster far below the rest (poisons fitted
        # through the trigger, its clean samples above them) outranks the label share: clean-label
        # poisons carry their true label, so an easy clean class can dominate the flagged set instead.
        # Early only: a trigger is learned first, while an easy clean class's losses pile up at the
        # floor later in training and split off too (trousers on clean Fashion-MNIST from epoch 4).
        # The high cluster must be the class's clean members (mostly predicted as their label), not
        # mislabelled poisons whose trigger is not learned yet (FTrojan: cutting there unlearns clean ones)
        early = int(self.epochs_decided) < cfg.target_patience
        # dirty-label poisons whose trigger the main head has not learned yet look like label noise
        # spread over every source class (FTrojan: 5% of the target class confidently predicted as each
        # other class), while a clean class's confusions go to a few look-alike classes
        spreads = confusion_spreads(self.pred_ema, self.given, valid, probs.shape[1])  # [K]
        spread_class = int(torch.argmax(spreads))
        by_confusion = early and 0 < cfg.min_confusion_spread <= float(spreads[spread_class]) and spread_class != major
        by_separation = (
            not by_confusion
            and early
            and 0 < cfg.clean_label_separation <= float(separations_by_class[best])
            and best != major
            and high_cluster_agreement(main_loss, probs, self.given, seen, best) >= 0.5
        )
        # dirty-label poisons whose trigger only the deep layers see (WaNet's warp): the main head fits
        # them far below the class's clean members while no shallow head finds them easier than those,
        # so within that class the shallow and main losses rank the members unlike in any other class.
        # The last resort, when no other test has a candidate: on dithered BPP, whose target the label
        # share names, a clean class ranked lower (sandals 0.33, full set, seed 0)
        rho = rank_agreements(score, main_loss, self.given, valid & seen, probs.shape[1])  # [H, K]
        agreements = rho.max(dim=0).values  # [K]
        agree_class = int(torch.argmin(agreements))
        # and, as with any dirty-label target, the poisons' runner-up classes (their true ones) spread
        # over every other class: a clean class that the heads rank apart is confused with a few
        # look-alikes (shirts on a clean subset: 0.18-0.20 of the class; WaNet's target 0.51-0.54)
        runner_up = confusion_spreads(probs, self.given, valid & seen, probs.shape[1], runner_up=True)  # [K]
        by_agreement = (
            not (by_confusion or by_separation)
            and major < 0
            and early
            and 0 < cfg.max_rank_agreement
            and float(agreements[agree_class]) <= cfg.max_rank_agreement
            and float(runner_up[agree_class]) * (probs.shape[1] - 1) >= MIN_NOISE_SHARE
        )
        if by_confusion:
            major = spread_class
        elif by_separation:
            major = best
        elif by_agreement:
            major = agree_class
        if major == int(self.candidate_target):
            self.candidate_streak += 1
        else:
            self.candidate_target.fill_(major)
            self.candidate_streak.fill_(1)
        newly = major >= 0 and int(self.suspected_target) < 0 and int(self.candidate_streak) >= cfg.target_patience
        if newly:
            self.suspected_target.fill_(major)
            self.target_source.fill_(2 if by_confusion else 3 if by_agreement else int(by_separation))
        target = int(self.suspected_target)

        if target >= 0 and int(self.target_source) in (2, 3):
            # named by the main head's confusions: its members that the prediction EMA gives to another
            # class are cut, and the cut grows as the unlearning makes more poisons look like their true
            # class (the isolated ones are trained on theirs, so they stay in). Named by the rank
            # disagreement: the main head has learned the trigger, so the cut starts from the members it
            # fits far below what the shallow head that ranks the class most like it expects (Otsu's
            # cut of main-head over shallow loss, at the decision)
            members = (self.given == target) & valid
            if newly and int(self.target_source) == 3:
                ratio = main_loss / score[int(rho[:, target].argmax())].clamp(min=1e-6)  # [N], floored as main_loss
                self.isolated |= below_otsu(ratio, members & seen)
            self.isolated |= members & (self.pred_ema.argmax(dim=1) != target)
            self.ascend.copy_(self.isolated)
        elif target >= 0 and int(self.target_source) == 1:
            # named by the main head's split: cut the class there, once, at the decision. The shallow
            # heads need not trap the trigger, and the ascent then lifts the isolated samples' main-head
            # loss, so this view is only clean before the cleansing starts: the set is kept
            if newly:
                members = (self.given == target) & seen
                self.isolated.copy_(below_otsu(main_loss, members))
                self.ascend.copy_(self.isolated)  # no gap split: the poisons' main losses span decades
        else:
            if cfg.cleanse_scope == "all_flagged":
                self.isolated.copy_(self.flagged)
            elif cfg.cleanse_scope == "target_split" and target >= 0:
                # a sample once below the class's cut stays isolated: the cut moves from epoch to epoch,
                # and the poisons it misses re-teach the trigger (Trojan: back from 0.2% to 97.8% ASR)
                members = (self.given == target) & torch.isfinite(score[head])
                self.isolated |= below_otsu(score[head], members)
            elif target >= 0:
                self.isolated.copy_(self.flagged & (self.given == target))
            else:
                self.isolated.zero_()
            self.ascend.copy_(self.isolated & split_by_gap(score[head], self.isolated, cfg.split_min_gap))
        self.flag_count += self.flagged.long()
        self.first_flagged.copy_(torch.where(self.flagged & (self.first_flagged < 0), epoch, self.first_flagged))

        excluded = self.pred_ema.clone()  # [N, K]
        drop = torch.where(self.given >= 0, self.given, 0) if target < 0 else torch.full_like(self.given, target)
        excluded.scatter_(1, drop.unsqueeze(1), -1.0)
        best, label = excluded.max(dim=1)
        # every flagged or isolated sample gets one (an isolated sample need not be flagged: the class
        # cuts), except the isolated samples of a clean-label target: their given label is their true one
        carriers = self.flagged if int(self.target_source) == 1 else self.flagged | self.isolated
        self.recovered.copy_(torch.where(carriers, label, torch.full_like(label, -1)))
        self.confident.copy_(self.ascend & (best >= cfg.recovery_threshold))
        self.epochs_decided += 1
        return {
            "train/num_flagged": float(self.flagged.sum()),
            "train/num_isolated": float(self.isolated.sum()),
            "train/num_ascending": float(self.ascend.sum()),
            "train/num_recovering": float(self.confident.sum()),
            "train/suspected_target": float(target),
            "train/candidate_target": float(major),
            "train/shallow_head": float(head),
            "train/flagged_label_share": shares[head],
            "train/flagged_separation": separations[head],
            "train/class_separation_max": float(separations_by_class.max()),
            "train/confusion_spread_max": float(spreads[spread_class]),
            "train/rank_agreement_min": float(agreements[agree_class]),
            "train/flagged_head_contrast": contrast,
        }

    def oracle_metrics(self) -> dict[str, float]:
        """Isolation precision/recall of the whole bank and recovery accuracy from the oracle keys (metrics only)."""
        if self.oracle_poisoned.numel() == 0 or int(self.oracle_poisoned.max()) < 0:
            return {}
        out = {}
        for name, chosen in (("", self.isolated), ("flagged_", self.flagged)):
            precision, recall = isolation_precision_recall(chosen, self.oracle_poisoned)
            out[f"isolation/{name}precision"], out[f"isolation/{name}recall"] = float(precision), float(recall)
        found = (self.flagged | self.isolated) & (self.oracle_poisoned > 0)
        correct = (self.recovered == self.oracle_true) & found
        out["isolation/recovery_acc"] = float(correct.sum() / found.sum().clamp(min=1))
        return out


def head_contrast(score: Tensor, head: int, members: Tensor) -> float:
    """Mean rank (0 = lowest score, 1 = highest) that the heads other than ``head`` give the ``members``.

    A trap is specific to its pooling: the samples one head traps through a trigger are not easy for a
    head that cannot see that trigger (the other heads rank them mid-way or high), while an easy clean
    class is easy for every head (ranked near 0). ``score`` is ``[H, N]``; returns 1.0 with one head
    or no members, so the check passes.
    """
    others = [h for h in range(score.shape[0]) if h != head]
    if not others or int(members.sum()) == 0:
        return 1.0
    n = score.shape[1]
    ranks = []
    for h in others:
        rank = torch.empty(n, dtype=torch.float64, device=score.device)
        rank[torch.sort(score[h], stable=True).indices] = torch.arange(n, dtype=torch.float64, device=score.device)
        ranks.append(float(rank[members].mean()) / max(n - 1, 1))
    return min(ranks)


def _otsu_cut(values: Tensor) -> int:
    """Size of the low cluster of Otsu's cut of sorted ``values`` ``[M]`` (M >= 2): the cut maximising
    the between-cluster variance."""
    m = values.shape[0]
    csum = values.cumsum(0)  # [M]
    i = torch.arange(1, m, dtype=torch.float64, device=values.device)  # size of the low cluster
    low = csum[:-1] / i
    high = (csum[-1] - csum[:-1]) / (m - i)
    return int(torch.argmax(i * (m - i) * (low - high) ** 2)) + 1


def otsu_threshold(score: Tensor, members: Tensor) -> float:
    """Otsu's threshold on the ``members``' log-scores.

    Used within the suspected target class, where the scores are bimodal: trapped poisons near zero
    loss and the class's clean samples. Returns -inf when fewer than two members.
    """
    values = torch.log(score[members].clamp(min=1e-12)).double().sort().values  # [M]
    if values.shape[0] < 2:
        return float("-inf")
    n = _otsu_cut(values)
    return float((values[n - 1] + values[n]) / 2)


def below_otsu(score: Tensor, members: Tensor) -> Tensor:
    """Mask of the ``members`` whose log-score falls below :func:`otsu_threshold` of theirs, ``[N]``."""
    return members & (torch.log(score.clamp(min=1e-12)) < otsu_threshold(score, members))


def ashman_d(values: Tensor) -> float:
    """Ashman's D of Otsu's two clusters of ``values``: the distance between their means in units of
    the pooled within-cluster standard deviation (a split unimodal bell gives about 2.7; well-separated
    modes more). Returns 0.0 for fewer than four values."""
    v = values.double().sort().values  # [M]
    if v.shape[0] < 4:
        return 0.0
    n = _otsu_cut(v)
    low, high = v[:n], v[n:]
    within = (low.var(unbiased=False) * n + high.var(unbiased=False) * (v.shape[0] - n)) / v.shape[0]
    return float((high.mean() - low.mean()) / within.sqrt().clamp(min=1e-12))


def main_head_loss(probs: Tensor, given: Tensor, floor: float = 1e-6) -> Tensor:
    """The main head's loss on each sample's given label, ``[N]``, from the epoch's mean softmax
    ``probs`` ``[N, K]``; floored at ``floor`` so that samples fitted to the last float digit do not
    form a cluster of their own."""
    p = probs.gather(1, given.clamp(min=0).unsqueeze(1)).squeeze(1)  # [N]
    return (-torch.log(p.clamp(min=1e-12))).clamp(min=floor)


def high_cluster_agreement(main_loss: Tensor, probs: Tensor, given: Tensor, seen: Tensor, label: int) -> float:
    """Share of class ``label``'s members above Otsu's cut of their ``main_loss`` whose most probable
    class (``probs`` ``[N, K]``) is ``label``; 0.0 if none."""
    members = seen & (given == label)
    high = members & ~below_otsu(main_loss, members)
    if int(high.sum()) == 0:
        return 0.0
    return float((probs[high].argmax(dim=1) == label).float().mean())


def class_separations(main_loss: Tensor, given: Tensor, seen: Tensor, num_classes: int) -> Tensor:
    """Per class, Ashman's D of its members' log ``main_loss`` (:func:`main_head_loss`), ``[K]``.

    A clean-label backdoor (SIG) shows as one class whose poisoned members sit orders of magnitude
    below its clean ones.
    """
    log_loss = torch.log(main_loss)
    out = torch.zeros(num_classes, dtype=torch.float64, device=main_loss.device)
    for c in range(num_classes):
        out[c] = ashman_d(log_loss[seen & (given == c)])
    return out


def confusion_spreads(probs: Tensor, given: Tensor, valid: Tensor, num_classes: int, runner_up: bool = False) -> Tensor:
    """Per class ``c``, the median over the other classes ``j`` of the share of ``c``'s members that
    ``probs`` ``[N, K]`` (the main head's prediction EMA) gives to ``j`` with probability above 0.5, ``[K]``;
    with ``runner_up``, whose most probable class other than ``c`` is ``j`` (every member counts; times
    ``K - 1`` this estimates the share of the class that looks like label noise from every class).

    Dirty-label poisons drawn from every class, before the trigger is learned, are predicted as their
    true classes: their target class is confused with every other class about equally (FTrojan on
    Fashion-MNIST: 5% of its members per other class), while a clean class's confusions go to a few
    look-alike classes (every class of a clean run: at most 1%, the median over its other classes).
    Returns zeros with fewer than two classes.
    """
    k = num_classes
    if k < 2:
        return torch.zeros(k, dtype=torch.float64, device=probs.device)
    if runner_up:
        pred = probs.scatter(1, given.clamp(min=0).unsqueeze(1), -1.0).argmax(dim=1)  # [N]
        wrong = valid
    else:
        pred = probs.argmax(dim=1)  # [N]
        wrong = valid & (pred != given) & (probs.max(dim=1).values > 0.5)
    counts = torch.bincount(given[wrong] * k + pred[wrong], minlength=k * k).view(k, k)  # [given, predicted]
    others = counts[~torch.eye(k, dtype=torch.bool, device=counts.device)].view(k, k - 1).double()  # [K, K-1]
    sizes = torch.bincount(given[valid], minlength=k).double().clamp(min=1)  # [K]
    return others.median(dim=1).values / sizes


def rank_agreements(score: Tensor, main_loss: Tensor, given: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """Per shallow head and class, Spearman's rank correlation between that head's ``score`` ``[H, N]``
    and ``main_loss`` ``[N]`` over the class's ``valid`` members, ``[H, K]`` (+inf for a class of fewer
    than three members).

    Within a clean class the heads find the same members easy (WaNet on Fashion-MNIST, the small CNN:
    the better head's correlation is 0.49 or more for every class of a clean run); a trigger that only
    the deep layers see makes the main head fit the poisons far below the class's clean members while
    the shallow heads rank them among those, so the poisoned class's correlation drops (0.37-0.40 on
    the deciding epochs). Not specific alone: clean shirts of a 20,000-image clean run reached 0.31,
    which is why the decision also asks for a runner-up spread. Ties are ranked by index.
    """
    h = score.shape[0]
    out = torch.full((h, num_classes), float("inf"), dtype=torch.float64, device=score.device)
    scored = valid & torch.isfinite(score).all(dim=0)  # [N]
    for c in range(num_classes):
        members = scored & (given == c)
        if int(members.sum()) < 3:
            continue
        main_rank = _centred_ranks(main_loss[members])  # [M]
        shallow_ranks = torch.stack([_centred_ranks(s[members]) for s in score])  # [H, M]
        out[:, c] = (shallow_ranks @ main_rank) / (shallow_ranks.norm(dim=1) * main_rank.norm()).clamp(min=1e-12)
    return out


def _centred_ranks(values: Tensor) -> Tensor:
    """Ranks ``0..M-1`` of ``values`` ``[M]`` (ties by position) minus their mean, as float64."""
    ranks = torch.empty(values.shape[0], dtype=torch.float64, device=values.device)
    ranks[torch.sort(values, stable=True).indices] = torch.arange(
        values.shape[0], dtype=torch.float64, device=values.device
    )
    return ranks - ranks.mean()


def split_by_gap(score: Tensor, members: Tensor, min_gap: float) -> Tensor:
    """Mask of the ``members`` below the widest gap in log-score, if that gap is at least ``min_gap``.

    Trapped poisons sit orders of magnitude below the easiest clean samples of their class (their
    shallow loss is near zero), so the widest multiplicative gap separates the confidently trapped
    samples from ambiguous ones. Without such a gap (or with ``min_gap <= 0``) every member counts
    as trapped. Returns a bool ``[N]`` mask.
    """
    out = members.clone()
    if min_gap <= 0 or int(members.sum()) < 2:
        return out
    values = torch.log(score[members].clamp(min=1e-12)).sort().values  # [M]
    gaps = values[1:] - values[:-1]  # [M - 1]
    widest = int(torch.argmax(gaps))
    if float(gaps[widest]) < min_gap:
        return out
    cut = (values[widest] + values[widest + 1]) / 2
    return members & (torch.log(score.clamp(min=1e-12)) < cut)
