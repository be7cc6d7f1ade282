"""E2ABL as a LightningModule: isolate, unlearn and recover labels in one training run.

Jiang, Ma, Erfani, Li, Bailey, "End-to-End Anti-Backdoor Learning on Images and Time Series",
arXiv 2401.03215 (2024). The algorithm as implemented, and the ablation behind every default, is in
``e2abl_lightning/models/e2abl/README.md``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from e2abl_lightning.data.poison import check_training_batch
from e2abl_lightning.models.backbones import BackboneFactory
from e2abl_lightning.models.base import BackdoorClassifier
from e2abl_lightning.models.e2abl.loss import lga, main_losses, shallow_losses, total_loss
from e2abl_lightning.models.e2abl.state import DecisionConfig, IsolationState
from e2abl_lightning.models.e2abl.torch_model import TwoHeadNet


class E2ABL(BackdoorClassifier):
    """End-to-end anti-backdoor learning with a shallow "backdoor trap" head.

    Each step runs both heads once. The shallow heads learn the given labels; backdoor triggers are
    simple features, so they fit poisoned samples first and their loss on them falls fastest. After
    ``warmup_epochs`` the lowest-scored ``isolation_ratio`` of the training set is flagged every
    epoch, the flagged samples of the suspected target class are unlearned by the main head and, once
    the main head is confident about their true class, trained on that recovered label. Inference
    uses the main head only. The batch may carry oracle keys; they feed the ``isolation/*`` metrics
    and never the algorithm.

    Args:
        backbone: callable ``(input_shape, num_classes) -> nn.Module`` with a ``shallow_layer``.
        num_classes: number of classes (linked from the datamodule).
        input_shape: one sample's shape (linked from the datamodule).
        optimizer: optimiser callable.
        scheduler: optional LR scheduler callable.
        shallow_layer: submodule the shallow heads tap; None uses the backbone's ``shallow_layer``.
        shallow_poolings: one shallow head per pooling; with several, each epoch uses the head whose
            flagged set is most dominated by one given label.
        shallow_hidden: channels of each shallow head's conv.
        shallow_loss: ``"ce"`` per-sample cross-entropy, or ``"lga"`` (ABL's local gradient ascent).
        lga_gamma: LGA threshold.
        shallow_weight: weight of the shallow heads' loss in the total.
        shallow_grad_to_stem: let the shallow loss train the shared stem (False: stop-gradient).
        warmup_epochs: epochs before the first isolation decision.
        isolation_ratio: share of the training set flagged each epoch.
        score: ``"running_mean"`` of each sample's shallow loss across epochs, or this ``"epoch"``'s.
        target_patience: consecutive epochs the flagged set's majority label must hold before it is
            taken (and then kept) as the suspected target.
        cleanse: ``"ascent"`` (bounded gradient ascent), ``"drop"`` (weight 0) or ``"none"``.
        cleanse_scope: ``"suspected_target"`` (flagged samples given the suspected target label),
            ``"target_split"`` (samples given the suspected target label whose log-score falls below
            Otsu's threshold within that class: on large image sets the flagged share misses poisons
            crowded out by easy clean samples of other classes) or ``"all_flagged"``.
        ascent_ceiling: per-sample loss above which ascent stops.
        ascent_weight: weight of the ascent term.
        ascent_stop_grad: stop the unlearned samples' main-head gradient at the shallow layer.
        recovery: train cleansed samples on their recovered label ``"confident"``-ly (when the
            prediction EMA passes ``recovery_threshold``), ``"always"`` or ``"never"``.
        recovery_threshold: confidence needed to train on a recovered label.
        ema_momentum: momentum of the per-sample prediction EMA.
        split_min_gap: the cleansed samples are split at the widest gap of their log-score when it is
            at least this wide: those below it (confidently trapped) are unlearned by ascent, the
            others only left out of the main loss (0 or less: ascend on all).
        head_selection: with several shallow heads, use each epoch the one whose flagged set sits
            furthest below the median log-score (``"separation"``) or is most dominated by one given
            label (``"label_share"``; once a target is suspected, that holds the most samples given it).
        min_label_share: a label becomes the candidate target only when it holds at least this share
            of the chosen head's flagged set (0: always). Without a backdoor the flagged set is the
            easiest clean samples, a mix; a guard against splitting a clean class.
        clean_label_separation: on the first ``target_patience`` decisions, a class whose main-head
            log-losses split into two clusters at least this far apart (Ashman's D) becomes the
            candidate target, ahead of the label share, when its high-loss cluster mostly agrees with
            its label (a clean-label attack such as SIG fits its poisons far below the class's clean
            samples); such a target is cut once on those losses. 0 turns this off.
        min_head_contrast: a label-share candidate is taken only when the other shallow heads rank its
            flagged samples at least this high on average (0 = lowest, 1 = highest score): a trap is
            specific to its pooling, an easy clean class is easy for every head; 0 turns this off.
        min_confusion_spread: on the first ``target_patience`` decisions, a class whose members the main
            head's prediction EMA confidently gives to every other class (the median over the other
            classes of that share, :func:`~e2abl_lightning.models.e2abl.state.confusion_spreads`) at
            least this often becomes the candidate target, ahead of the label share and the class
            separation: dirty-label poisons whose trigger is not learned yet look like label noise from
            every source class (FTrojan). From the decision on, every member of such a target that the
            prediction EMA gives to another class is unlearned (the set only grows). 0 turns this off.
        max_rank_agreement: on the first ``target_patience`` decisions, when no other test names a
            candidate, the class whose members no shallow head ranks like the main head does (the largest
            Spearman correlation between a shallow head's and the main head's per-sample losses,
            :func:`~e2abl_lightning.models.e2abl.state.rank_agreements`) becomes the candidate target if
            that correlation is at most this and at least a third of the class looks like label noise
            from every class (its members' runner-up classes spread over all others): the main head fits
            poisons of a trigger only deep layers see (WaNet) far below the class's clean members, the
            shallow heads do not. Such a target is cut at Otsu's threshold of its members' main-head over
            shallow loss at the decision, and then grows as with ``min_confusion_spread``. 0 turns this off.
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        num_classes: int,
        input_shape: tuple[int, ...],
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        shallow_layer: str | None = None,
        shallow_poolings: tuple[Literal["max", "avg"], ...] = ("max", "avg"),
        shallow_hidden: int = 32,
        shallow_loss: Literal["ce", "lga"] = "ce",
        lga_gamma: float = 0.5,
        shallow_weight: float = 1.0,
        shallow_grad_to_stem: bool = False,
        warmup_epochs: int = 3,
        isolation_ratio: float = 0.15,
        score: Literal["running_mean", "epoch"] = "running_mean",
        target_patience: int = 2,
        cleanse: Literal["ascent", "drop", "none"] = "ascent",
        cleanse_scope: Literal["suspected_target", "target_split", "all_flagged"] = "suspected_target",
        ascent_ceiling: float = 5.0,
        ascent_weight: float = 1.0,
        ascent_stop_grad: bool = False,
        recovery: Literal["confident", "always", "never"] = "confident",
        recovery_threshold: float = 0.9,
        ema_momentum: float = 0.7,
        split_min_gap: float = 1.0,
        head_selection: Literal["separation", "label_share"] = "separation",
        min_label_share: float = 0.0,
        clean_label_separation: float = 0.0,
        min_head_contrast: float = 0.0,
        min_confusion_spread: float = 0.0,
        max_rank_agreement: float = 0.0,
    ) -> None:
        super().__init__(backbone, num_classes, input_shape, optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        _check_choice("shallow_loss", shallow_loss, ("ce", "lga"))
        _check_choice("score", score, ("running_mean", "epoch"))
        _check_choice("cleanse", cleanse, ("ascent", "drop", "none"))
        _check_choice("cleanse_scope", cleanse_scope, ("suspected_target", "target_split", "all_flagged"))
        _check_choice("recovery", recovery, ("confident", "always", "never"))
        _check_choice("head_selection", head_selection, ("separation", "label_share"))
        for p in shallow_poolings:
            _check_choice("shallow_poolings", p, ("max", "avg"))
        if not 0.0 < isolation_ratio < 1.0:
            raise ValueError(f"isolation_ratio={isolation_ratio} must be in (0, 1), e.g. 0.15")
        if warmup_epochs < 1:
            raise ValueError(f"warmup_epochs={warmup_epochs} must be at least 1")
        if target_patience < 1:
            raise ValueError(f"target_patience={target_patience} must be at least 1")
        if not (0 < ascent_ceiling < float("inf")):
            raise ValueError(f"ascent_ceiling={ascent_ceiling} must be finite and positive (it bounds the ascent)")
        if not (0 <= ascent_weight < float("inf")):
            raise ValueError(f"ascent_weight={ascent_weight} must be finite and >= 0, e.g. 1.0")
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum={ema_momentum} must be in [0, 1)")
        if not 0.0 <= min_label_share < 1.0:
            raise ValueError(f"min_label_share={min_label_share} must be in [0, 1), e.g. 0.4 on large image sets")
        if not 0.0 <= clean_label_separation < float("inf"):
            raise ValueError(
                f"clean_label_separation={clean_label_separation} must be finite and >= 0 (0: off), e.g. 3.5"
            )
        if not 0.0 <= min_head_contrast < 1.0:
            raise ValueError(f"min_head_contrast={min_head_contrast} must be in [0, 1) (0: off), e.g. 0.2")
        if not 0.0 <= min_confusion_spread < 1.0:
            raise ValueError(f"min_confusion_spread={min_confusion_spread} must be in [0, 1) (0: off), e.g. 0.02")
        if not 0.0 <= max_rank_agreement < 1.0:
            raise ValueError(f"max_rank_agreement={max_rank_agreement} must be in [0, 1) (0: off), e.g. 0.43")
        if not 0.0 <= recovery_threshold <= 1.0:
            raise ValueError(f"recovery_threshold={recovery_threshold} must be in [0, 1]")
        self.net = TwoHeadNet(
            self.backbone,
            self.num_classes,
            self.input_shape,
            shallow_layer,
            tuple(shallow_poolings),
            shallow_hidden,
            shallow_grad_to_stem,
        )
        del self.backbone  # registered once, inside the two-head net
        self.shallow_loss = shallow_loss
        self.lga_gamma = lga_gamma
        self.shallow_weight = shallow_weight
        self.cleanse = cleanse
        self.ascent_ceiling = ascent_ceiling
        self.ascent_weight = ascent_weight
        self.ascent_stop_grad = ascent_stop_grad
        self.recovery = recovery
        self.decision = DecisionConfig(
            warmup_epochs=warmup_epochs,
            isolation_ratio=isolation_ratio,
            score=score,
            target_patience=target_patience,
            cleanse_scope=cleanse_scope,
            ema_momentum=ema_momentum,
            recovery_threshold=recovery_threshold,
            split_min_gap=split_min_gap,
            head_selection=head_selection,
            min_label_share=min_label_share,
            clean_label_separation=clean_label_separation,
            min_head_contrast=min_head_contrast,
            min_confusion_spread=min_confusion_spread,
            max_rank_agreement=max_rank_agreement,
        )
        self.state = IsolationState(0, self.num_classes, len(shallow_poolings))
        # DDP broadcasts rank 0's buffers before every forward: that would overwrite the other ranks'
        # epoch accumulators; the state bank is synced by its own all-reduce instead
        self._ddp_params_and_buffers_to_ignore = [f"state.{name}" for name, _ in self.state.named_buffers()]

    # ---- inference: the main head only -------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:  # [B, ...] -> [B, K]
        return self.net.predict(x)

    # ---- state bank sizing ------------------------------------------------------------------
    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        n = len(loader.dataset) if loader is not None else 0
        if self.state.num_samples != n:
            if int(self.state.epochs_decided) > 0:
                raise ValueError(
                    f"the checkpoint's state bank holds {self.state.num_samples} training samples but the "
                    f"training set has {n}: resume with the dataset the checkpoint was trained on"
                )
            self.state.resize(n, self.num_classes, len(self.net.heads))
            self.state.to(self.device)
        self._record_dataset_oracle(loader)

    def _record_dataset_oracle(self, loader: Any) -> None:
        """Metrics only: a dataset that knows every sample's oracle keys gives them all at once, so the
        isolation metrics cover the whole bank, samples a short or ``drop_last`` epoch skips included."""
        dataset = getattr(loader, "dataset", None)
        poisoned, truth = getattr(dataset, "poisoned", None), getattr(dataset, "original_targets", None)
        self._oracle_whole = (
            isinstance(poisoned, Tensor) and isinstance(truth, Tensor) and len(poisoned) == self.state.num_samples
        )
        if self._oracle_whole:
            index = torch.arange(self.state.num_samples, device=self.device)
            self.state.record_oracle(index, poisoned.to(self.device), truth.to(self.device))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.state.load_state_dict_sizes(checkpoint["state_dict"], "state.")

    def on_train_epoch_start(self) -> None:
        self.state.reset_accumulators()

    # ---- the user's data: the batch contract, checked on a fit's first batch only (no per-step sync) ----
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if not getattr(self, "_batch_checked", False):
            check_training_batch(batch, self.num_classes)
            self._batch_checked = True

    # ---- one step -----------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # checked on the host, before the batch moves: no device sync in the training step
        if self.trainer.training and isinstance(batch, dict) and "index" in batch:
            index = batch["index"]
            if int(index.max()) >= self.state.num_samples or int(index.min()) < 0:
                raise ValueError(
                    f"batch index {int(index.max())} is outside the state bank of {self.state.num_samples} "
                    "samples; the training set must give dense indices 0..N-1 under the key 'index'"
                )
        return batch

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x, y, index = batch["input"], batch["target"], batch["index"]
        cleanse = self.state.isolated[index] if self.cleanse != "none" else torch.zeros_like(y, dtype=torch.bool)
        stop = cleanse if self.ascent_stop_grad else None
        out = self.net(x, stop_grad_mask=stop)
        per_shallow = shallow_losses(out.shallow, y)  # [H, B]
        shallow_term = lga(per_shallow, self.lga_gamma) if self.shallow_loss == "lga" else per_shallow
        recovered = self.state.recovered[index]
        ascend = cleanse & self.state.ascend[index] if self.cleanse == "ascent" else torch.zeros_like(cleanse)
        if self.recovery == "confident":
            train_recovered = self.state.confident[index]
        else:
            train_recovered = ascend & (self.recovery == "always")
        per_main = main_losses(
            out.main, y, cleanse, ascend, recovered, train_recovered, self.ascent_ceiling, self.ascent_weight
        )  # [B]
        loss = total_loss(per_main, shallow_term, self.shallow_weight)
        self.state.accumulate(index, per_shallow.detach(), out.main.detach().float().softmax(dim=1), y)
        if "poisoned" in batch and "original_target" in batch and not getattr(self, "_oracle_whole", False):
            self.state.record_oracle(index, batch["poisoned"], batch["original_target"])
        b = y.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=b)
        return loss

    # ---- the epoch's decision (at the last batch: before validation and checkpointing) ---------
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.trainer.is_last_batch or batch_idx + 1 >= self.trainer.num_training_batches:
            self.end_of_epoch_decision()

    def end_of_epoch_decision(self) -> None:
        """Sync the accumulators across ranks, decide, log."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
            self.state.sync_(lambda t, op: dist.all_reduce(t, op=ops[op]))
        finite = [self.state.acc_loss.isfinite().all(), self.state.acc_prob.isfinite().all()]
        finite += [p.isfinite().all() for p in self.parameters()]  # DDP: the same weights on every rank
        if not bool(torch.stack(finite).all()):
            raise ValueError(  # after the sync: every rank raises, none waits; nothing is decided or checkpointed
                f"E2ABL diverged in epoch {self.current_epoch}: losses or weights hold NaN or inf; lower the lr, "
                f"ascent_weight={self.ascent_weight} or ascent_ceiling={self.ascent_ceiling}"
            )
        seen = self.state.acc_count.sum() * self.state.acc_loss.shape[0]
        shallow_loss = float(self.state.acc_loss.sum() / seen.clamp(min=1))  # the epoch's mean, from the sums
        logs = {"train/loss_shallow": shallow_loss, **self.state.decide(self.current_epoch, self.decision)}
        logs.update(self.state.oracle_metrics())
        for name, value in logs.items():
            self.log(name, float(value), on_step=False, on_epoch=True, batch_size=1, sync_dist=False)

    # ---- after fit: every sample ever flagged or isolated, for review ---------------------------
    def on_fit_end(self) -> None:
        log_dir = self.trainer.log_dir  # a collective call: every rank
        if self.trainer.is_global_zero and self.trainer.logger is not None and log_dir is not None:
            self.write_suspects(f"{log_dir}/suspects.csv")

    def write_suspects(self, path: str) -> None:
        """Write one CSV row per training sample ever flagged (``flag_count > 0``) or isolated now, lowest
        score first.

        Columns: ``index``, the dataset's ``ids`` when it has that attribute, ``source_index`` and
        ``source`` (the sample's position and origin in the user's data) when it has ``source_index`` and
        ``sources``, ``score`` (running mean of the chosen shallow head), ``given``, ``recovered``,
        ``epochs_flagged``, ``first_flagged`` (epoch), ``isolated`` (now). Reads the synced state bank only.
        """
        import csv
        import os

        s = self.state
        head = max(int(s.head_choice), 0)
        score = s.scores("running_mean")[head].cpu()  # [N]
        index = torch.nonzero((s.flag_count > 0) | s.isolated).flatten().cpu()
        index = index[torch.sort(score[index], stable=True).indices]
        loader = self.trainer.train_dataloader if self._trainer is not None else None
        dataset = getattr(loader, "dataset", None)
        ids = getattr(dataset, "ids", None)
        # where each sample comes from in the user's data (file row, torchvision index, image path)
        origin = (getattr(dataset, "source_index", None), getattr(dataset, "sources", None))
        origin = None if origin[0] is None or origin[1] is None else origin
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            id_col = ["id"] if ids is not None else []
            writer.writerow(
                ["index", *id_col, *(["source_index", "source"] if origin else []), "score", "given", "recovered"]
                + ["epochs_flagged", "first_flagged", "isolated"]
            )
            columns = [t.cpu()[index].tolist() for t in (s.given, s.recovered, s.flag_count, s.first_flagged)]
            isolated = s.isolated.cpu()[index].tolist()
            for row, i in enumerate(index.tolist()):
                ident = [ids[i]] if ids is not None else []
                ident += [int(origin[0][i]), origin[1][i]] if origin else []
                values = [column[row] for column in columns]
                writer.writerow([i, *ident, f"{float(score[i]):.6g}", *values, isolated[row]])


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")
