"""Per-sample state bank of E2ABL: it holds and syncs buffers and applies the policy's decision.

Decided state lives in persistent buffers (checkpointed, resized on load), epoch sums in the others.
Under DDP every rank scatter-adds into its own accumulators, all-reduces them at the epoch end and
takes the same deterministic decision (:mod:`~e2abl_lightning.models.e2abl.policy`), so no broadcast
is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from e2abl_lightning.metrics.functional import isolation_precision_recall
from e2abl_lightning.models.e2abl import policy as P
from e2abl_lightning.models.e2abl import reference as R

#: ``all_reduce(tensor, op)`` in place, ``op`` in {"sum", "max"}.
AllReduce = Callable[[Tensor, str], None]

# name: (dims, dtype, fill); "v" views (shallow heads, then the main head), "n" samples, "k" classes,
# "d" the width of the inputs' sketch (reference.SKETCH_DIM)
_PERSISTENT = {
    "score": ("vn", torch.float32, float("nan")),
    "last_z": ("vn", torch.float32, float("nan")),
    "given": ("n", torch.long, -1),
    "pred_ema": ("nk", torch.float32, 0),
    "flagged": ("n", torch.bool, False),
    "isolated": ("n", torch.bool, False),
    "recovered": ("n", torch.long, -1),
    "flag_count": ("n", torch.long, 0),
    "first_flagged": ("n", torch.long, -1),
    "content": ("n", torch.long, -1),
}
_ACCUMULATORS = {
    "acc_margin": ("vn", torch.float32, 0),
    "acc_count": ("n", torch.float32, 0),
    "acc_prob": ("nk", torch.float32, 0),
    "acc_given": ("n", torch.long, -1),
    "acc_sketch": ("nd", torch.float32, 0),
    "oracle_poisoned": ("n", torch.long, -1),
    "oracle_true": ("n", torch.long, -1),
}
#: decided scalars: the target's hysteresis (``policy.Naming``), the view cut, and what the test can see
_SCALARS = {
    "suspected_target": -1,
    "candidate_target": -1,
    "candidate_streak": 0,
    "quiet_streak": 0,
    "view": -1,
    "epochs_decided": 0,
}
_SUM = ("acc_margin", "acc_count", "acc_prob", "acc_sketch")
#: oracle keys (metrics only) are kept across epochs: a sample not seen this epoch keeps its key
_ORACLE = ("oracle_poisoned", "oracle_true")
_MAX = ("acc_given", "oracle_poisoned", "oracle_true")
#: momentum of the per-sample prediction EMA behind the pseudo-labels
EMA_MOMENTUM = 0.7
#: the columns of :meth:`IsolationState.decide`'s ``table``: one row per class and view of an epoch's tests
TABLE_COLUMNS = ("epoch", "class", "view", "dip", "p", "adjusted_p", "trapped", "passing", "named", "confused_share")


class IsolationState(nn.Module):
    """Per-sample state for ``num_samples`` training samples, ``num_classes`` classes, ``num_views``
    views (each shallow head, then the main head)."""

    def __init__(self, num_samples: int = 0, num_classes: int = 2, num_views: int = 3) -> None:
        super().__init__()
        for name, value in _SCALARS.items():
            self.register_buffer(name, torch.tensor(value))
        # the smallest share of a class the test can isolate (policy.detectable_share); 0: not yet known
        self.register_buffer("detectable", torch.tensor(0.0))
        self.table: list[list] = []  # the last decision's class tests (TABLE_COLUMNS), for decisions.csv
        self.resize(num_samples, num_classes, num_views)

    @property
    def num_samples(self) -> int:
        return int(self.given.shape[0])

    def resize(self, num_samples: int, num_classes: int, num_views: int) -> None:
        """(Re)allocate every per-sample buffer, clearing it."""
        sizes = {"n": num_samples, "k": num_classes, "v": num_views, "d": R.SKETCH_DIM}
        device = self.suspected_target.device
        for table, persistent in ((_PERSISTENT, True), (_ACCUMULATORS, False)):
            for name, (dims, dtype, fill) in table.items():
                value = torch.full([sizes[d] for d in dims], fill, dtype=dtype, device=device)
                self.register_buffer(name, value, persistent=persistent)

    def load_state_dict_sizes(self, state_dict: dict[str, Tensor], prefix: str) -> None:
        """Resize to the shapes stored in a checkpoint before it is loaded."""
        if prefix + "score" in state_dict:
            v, n = state_dict[prefix + "score"].shape
            self.resize(n, state_dict[prefix + "pred_ema"].shape[1], v)
            # a checkpoint from before the content test: its content labels are found again from the inputs
            state_dict.setdefault(prefix + "content", torch.full((n,), -1, dtype=torch.long))

    # ---- during the epoch ---------------------------------------------------------------------
    def reset_accumulators(self) -> None:
        for name, (_, _, fill) in _ACCUMULATORS.items():
            if name not in _ORACLE:
                getattr(self, name).fill_(fill)

    @torch.no_grad()
    def accumulate(self, index: Tensor, margin: Tensor, probs: Tensor, given: Tensor) -> None:
        """Add one batch: ``index`` ``[B]``, ``margin`` ``[V, B]``, ``probs`` ``[B, K]``, ``given`` ``[B]``."""
        self.acc_margin.index_add_(1, index, margin.float())
        self.acc_count.index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
        self.acc_prob.index_add_(0, index, probs.float())
        self.acc_given.scatter_reduce_(0, index, given, "amax")

    @property
    def sketching(self) -> bool:
        """Whether the inputs' sketch is still being gathered: until the first decision finds the content
        labels (one host sync)."""
        return not bool((self.content >= 0).any())

    @torch.no_grad()
    def accumulate_sketch(self, index: Tensor, inputs: Tensor) -> None:
        """Add one batch's inputs ``[B, ...]`` to the sketch (a fixed projection, ``reference.sketch_matrix``)."""
        flat = inputs.detach().flatten(1).float()
        if getattr(self, "_projection", None) is None or self._projection.shape[0] != flat.shape[1]:
            self._projection = R.sketch_matrix(flat.shape[1]).to(flat.device)
        with torch.autocast(flat.device.type, enabled=False):  # float32 under mixed precision too
            self.acc_sketch.index_add_(0, index, flat @ self._projection)

    @torch.no_grad()
    def record_oracle(self, index: Tensor, poisoned: Tensor, original_target: Tensor) -> None:
        """Oracle keys of ``index`` (all samples at once from a dataset that has them, else batch by batch),
        for isolation metrics only: the decision never reads them."""
        self.oracle_poisoned.scatter_reduce_(0, index, poisoned.long(), "amax")
        self.oracle_true.scatter_reduce_(0, index, original_target.long(), "amax")

    def sync_(self, all_reduce: AllReduce) -> None:
        """All-reduce the epoch accumulators across ranks (sum, or max for labels); the inputs' sketch
        only until the content labels are found (every rank knows that from the same synced state)."""
        sketching = self.sketching
        for name in _SUM:
            if name != "acc_sketch" or sketching:
                all_reduce(getattr(self, name), "sum")
        for name in _MAX:
            all_reduce(getattr(self, name), "max")

    # ---- at the epoch end -------------------------------------------------------------------------
    def scores(self) -> Tensor:
        """The views the policy tests, ``[V', N]`` (``policy.views``): each head's within-class robust z
        of the margin, averaged over the last two epochs (higher: fitted better than its classmates;
        NaN: never seen), then each pair of heads' disagreement."""
        return P.views(self.score, self.given, self.pred_ema.shape[1]).z

    @torch.no_grad()
    def fold_epoch(self) -> None:
        """Fold the epoch's sums into the labels, the prediction EMA and the scores."""
        seen = self.acc_count > 0  # [N]
        first = seen & (self.pred_ema.sum(dim=1) == 0)
        self.given.copy_(torch.where(seen, self.acc_given, self.given))
        probs = self.acc_prob / self.acc_count.clamp(min=1).unsqueeze(1)  # [N, K]
        ema = torch.where(first.unsqueeze(1), probs, EMA_MOMENTUM * self.pred_ema + (1 - EMA_MOMENTUM) * probs)
        self.pred_ema.copy_(torch.where(seen.unsqueeze(1), ema, self.pred_ema))
        margin = self.acc_margin / self.acc_count.clamp(min=1)  # [V, N]
        z = P.standardize(margin, self.given, seen, self.pred_ema.shape[1])  # [V, N], NaN unseen
        self.score.copy_(torch.stack([z, self.last_z]).nanmean(dim=0))
        self.last_z.copy_(torch.where(seen, z, self.last_z))

    @torch.no_grad()
    def decide(self, epoch: int, policy: P.IsolationPolicy) -> dict[str, float]:
        """Fold the epoch in and apply the policy's deterministic decision; returns values to log."""
        self.fold_epoch()
        if epoch + 1 < policy.warmup_epochs:
            return {}
        k = self.pred_ema.shape[1]
        views = P.views(self.score, self.given, k)
        valid = self.given >= 0
        if float(self.detectable) == 0.0:  # once, on the first decision: the class sizes are known now
            sizes = torch.bincount(self.given[valid], minlength=k).cpu()
            self.detectable.fill_(min(P.detectable_share(sizes, policy, views.z.shape[0]), 1e9))
        confused = valid & (self.pred_ema.argmax(dim=1) != self.given)  # [N]
        tests = P.class_tests(views, self.given, confused, k, policy.level(k, views.z.shape[0]))
        able = P.can_isolate(float(self.detectable), k)
        if not able:  # the test cannot see a poisoning the threat model covers: train as undefended
            tests = P.ClassTests(tests.dip, torch.ones_like(tests.p), tests.trapped)
        content = self._content_tests() if able else None
        before = int(self.suspected_target)
        naming = P.name_target(self._naming(), tests, policy, content)
        self._store(naming)
        if naming.target != before:
            self.isolated.zero_()  # a new target or a release: the cut starts afresh
        shown = naming.target if naming.target >= 0 else naming.candidate
        self.flagged.zero_()
        if shown >= 0:
            self._cut(views, tests, content, confused, shown, naming.target == before >= 0, policy)
        if naming.target >= 0:
            self.isolated |= self.flagged
        self._record(epoch)
        self.table = self._table(epoch, tests, naming, policy, confused)
        return {**self._logs(tests, naming, policy), **self._content_logs(content)}

    @staticmethod
    def _content_logs(content: R.ContentTests | None) -> dict[str, float]:
        if content is None:
            return {}
        adjusted = (content.p * content.p.numel()).clamp(max=1.0)
        return {
            "train/content_min_adjusted_p": float(adjusted.min()),
            "train/content_max_share": float(content.share.max()),
        }

    def _cut(self, views, tests, content, confused, shown: int, cleansing: bool, policy: P.IsolationPolicy) -> None:
        """Flag class ``shown``'s odd side in its most significant usable view of the class test or, where
        it passes in none, the lifted set of its content test."""
        usable, anchor = P.passing(tests, policy)[shown], None
        if cleansing:  # being cleansed since an earlier epoch
            usable &= P.witnesses(self.score.shape[0])
            anchor = self.isolated
        if bool(usable.any()) or content is None:
            flagged, view = P.cut(views, self.given, confused, tests, shown, usable, anchor)
            if view >= 0:
                self.view.fill_(view)
        else:
            flagged = P.content_cut(self._shallow_margins(), self.given, content, shown, policy)
        self.flagged.copy_(flagged)

    def _shallow_margins(self) -> Tensor:
        """The shallow heads' mean margins of the epoch, ``[H, N]`` (the main head is the last view)."""
        return (self.acc_margin / self.acc_count.clamp(min=1))[:-1]

    def _content_tests(self) -> R.ContentTests | None:
        """The content test of every class under every shallow head; the content labels are found once,
        at the first decision, from the sketch the first epoch gathered (None where no sketch was)."""
        k = self.pred_ema.shape[1]
        if self.sketching:
            seen = self.acc_count > 0
            if not bool(seen.any()) or not bool(self.acc_sketch.any()):
                return None
            sketch = self.acc_sketch / self.acc_count.clamp(min=1).unsqueeze(1)
            self.content.copy_(R.content_labels(sketch, torch.where(seen, self.given, -1), k))
        return R.content_tests(self._shallow_margins(), self.given, self.content, k)

    def _naming(self) -> P.Naming:
        return P.Naming(
            int(self.suspected_target), int(self.candidate_target), int(self.candidate_streak), int(self.quiet_streak)
        )

    def _store(self, naming: P.Naming) -> None:
        self.suspected_target.fill_(naming.target)
        self.candidate_target.fill_(naming.candidate)
        self.candidate_streak.fill_(naming.streak)
        self.quiet_streak.fill_(naming.quiet)

    def _record(self, epoch: int) -> None:
        """Flag history and the recovered labels of every flagged or isolated sample."""
        self.flag_count += self.flagged.long()
        self.first_flagged.copy_(torch.where(self.flagged & (self.first_flagged < 0), epoch, self.first_flagged))
        q, _ = P.pseudo_labels(self.pred_ema, self.given.clamp(min=0))
        carriers = self.flagged | self.isolated
        self.recovered.copy_(torch.where(carriers, q.argmax(dim=1), torch.full_like(self.recovered, -1)))
        self.epochs_decided += 1

    def _table(
        self, epoch: int, tests: P.ClassTests, naming: P.Naming, policy: P.IsolationPolicy, confused: Tensor
    ) -> list[list]:
        """This epoch's class tests, one row per class and view (``TABLE_COLUMNS``): why a class was or was
        not named. ``confused_share``: the share of the class the main head's EMA gives to another class."""
        k, v = tests.p.shape
        ok = P.passing(tests, policy).tolist()
        valid = self.given >= 0
        members = torch.bincount(self.given[valid], minlength=k).clamp(min=1)
        shares = (torch.bincount(self.given[valid & confused], minlength=k) / members).tolist()
        dip, p, trapped = tests.dip.tolist(), tests.p.tolist(), tests.trapped.tolist()
        adjusted = P.adjusted_p(tests.p).tolist()
        return [
            [epoch, c, view, dip[c][view], p[c][view], adjusted[c][view], trapped[c][view]]
            + [ok[c][view], c == naming.target, shares[c]]
            for c in range(k)
            for view in range(v)
        ]

    def _logs(self, tests: P.ClassTests, naming: P.Naming, policy: P.IsolationPolicy) -> dict[str, float]:
        adjusted = P.adjusted_p(tests.p)
        return {
            "train/num_flagged": float(self.flagged.sum()),
            "train/num_isolated": float(self.isolated.sum()),
            "train/suspected_target": float(naming.target),
            "train/candidate_target": float(naming.candidate),
            "train/view": float(self.view),
            "train/min_adjusted_p": float(adjusted.min()),
            "train/max_dip": float(tests.dip.max()),
            "train/detectable_share": float(self.detectable),
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
