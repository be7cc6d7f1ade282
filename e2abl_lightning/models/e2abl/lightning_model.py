"""E2ABL as a LightningModule: isolate, unlearn and recover labels in one training run.

Jiang, Ma, Erfani, Li, Bailey, "End-to-End Anti-Backdoor Learning on Images and Time Series",
arXiv 2401.03215 (2024). The algorithm as implemented, and the ablation behind every default, is in
``e2abl_lightning/models/e2abl/README.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from e2abl_lightning.data.poison import check_training_batch
from e2abl_lightning.models.backbones import BackboneFactory
from e2abl_lightning.models.base import BackdoorClassifier
from e2abl_lightning.models.e2abl.loss import cleansing_losses, shallow_losses, total_loss, trusted_losses
from e2abl_lightning.models.e2abl.policy import IsolationPolicy, blind_spot, margins, pseudo_labels, view_names
from e2abl_lightning.models.e2abl.state import TABLE_COLUMNS, IsolationState
from e2abl_lightning.models.e2abl.torch_model import TwoHeadNet

#: channels of each shallow head's conv: a trap needs little capacity
SHALLOW_HIDDEN = 32


class E2ABL(BackdoorClassifier):
    """End-to-end anti-backdoor learning with shallow "backdoor trap" heads.

    Each step runs both heads once. The shallow heads learn the given labels; backdoor triggers are
    simple features, so they fit poisoned samples far better than the rest of their class. At every
    epoch end the isolation ``policy`` tests each class, in each view (every shallow head and the main
    head), for a second, better-fitted population of its members; a class that passes is named the
    target, its odd population is isolated, unlearned with a complementary loss and trained towards
    the label the main head recovers. Without such a class nothing is isolated and training is the
    undefended one. Inference uses the main head only. The batch may carry oracle keys; they feed the
    ``isolation/*`` metrics and never the algorithm.

    Args:
        backbone: callable ``(input_shape, num_classes) -> nn.Module`` with a ``shallow_layer``.
        num_classes: number of classes (linked from the datamodule).
        input_shape: one sample's shape (linked from the datamodule).
        optimizer: optimiser callable.
        scheduler: optional LR scheduler callable.
        shallow_layer: submodule the shallow heads tap; None uses the backbone's ``shallow_layer``.
        shallow_poolings: one shallow head per pooling (max catches local triggers, avg global ones).
        policy: the isolation policy's knobs (:class:`~e2abl_lightning.models.e2abl.policy.IsolationPolicy`).
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
        policy: IsolationPolicy | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, input_shape, optimizer, scheduler)
        if isinstance(policy, dict):  # as stored in a checkpoint's hyperparameters
            policy = IsolationPolicy(**policy)
        if policy is not None and not isinstance(policy, IsolationPolicy):
            raise ValueError(f"policy={policy!r} must be an IsolationPolicy, e.g. IsolationPolicy(alpha=0.2)")
        self.policy = policy if policy is not None else IsolationPolicy()
        policy = dataclasses.asdict(self.policy)  # saved as plain values: checkpoints load with weights_only=True
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        for p in shallow_poolings:
            _check_choice("shallow_poolings", p, ("max", "avg"))
        self.net = TwoHeadNet(
            self.backbone,
            self.num_classes,
            self.input_shape,
            shallow_layer,
            tuple(shallow_poolings),
            SHALLOW_HIDDEN,
            False,
        )
        del self.backbone  # registered once, inside the two-head net
        self.state = IsolationState(0, self.num_classes, len(shallow_poolings) + 1)
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
            self.state.resize(n, self.num_classes, len(self.net.heads) + 1)
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
        # one host sync per epoch: while nothing is isolated the step is the undefended one plus the trap
        self._pseudo = self._bank_pseudo_labels() if bool(self.state.isolated.any()) else None
        self._sketching = self.state.sketching  # the inputs' sketch is gathered until the first decision

    def _bank_pseudo_labels(self) -> tuple[Tensor, Tensor]:
        """Every sample's pseudo-label and confidence: they read only decided state, so once per epoch."""
        return pseudo_labels(self.state.pred_ema, self.state.given.clamp(min=0))

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
        out = self.net(x)
        # a step outside a fit's epoch loop takes the cleansing path, which is exact for trusted samples too
        bank = self._pseudo if hasattr(self, "_pseudo") else self._bank_pseudo_labels()
        if bank is not None:
            pseudo, confidence = bank[0][index], bank[1][index]
            per_main = cleansing_losses(out.main, y, self.state.isolated[index], pseudo, confidence)  # [B]
        else:
            per_main = trusted_losses(out.main, y)  # [B], what cleansing_losses gives a trusted sample
        loss = total_loss(per_main, shallow_losses(out.shallow, y))
        with torch.no_grad():
            logits = torch.cat([out.shallow.float(), out.main.float().unsqueeze(0)])  # [V, B, K]
            self.state.accumulate(index, margins(logits, y), logits[-1].softmax(dim=1), y)
            if getattr(self, "_sketching", True):
                self.state.accumulate_sketch(index, x)
        if "poisoned" in batch and "original_target" in batch and not getattr(self, "_oracle_whole", False):
            self.state.record_oracle(index, batch["poisoned"], batch["original_target"])
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=y.shape[0])
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
        finite = [self.state.acc_margin.isfinite().all(), self.state.acc_prob.isfinite().all()]
        finite += [p.isfinite().all() for p in self.parameters()]  # DDP: the same weights on every rank
        if not bool(torch.stack(finite).all()):
            raise ValueError(  # after the sync: every rank raises, none waits; nothing is decided or checkpointed
                f"E2ABL diverged in epoch {self.current_epoch}: losses or weights hold NaN or inf; lower the lr"
            )
        decided = int(self.state.epochs_decided)
        logs = {**self.state.decide(self.current_epoch, self.policy), **self.state.oracle_metrics()}
        if decided == 0 and int(self.state.epochs_decided) > 0:
            self._warn_if_undetectable()
        if int(self.state.epochs_decided) > decided:
            self._append_decisions()
        for name, value in logs.items():
            self.log(name, float(value), on_step=False, on_epoch=True, batch_size=1, sync_dist=False)

    def _append_decisions(self) -> None:
        """Append the epoch's class tests to ``decisions.csv`` in the log directory (rank 0, with a logger):
        per class and view the dip, its p-value, whether the class passed and was named."""
        log_dir = self.trainer.log_dir  # a collective call: every rank
        if not self.trainer.is_global_zero or self.trainer.logger is None or log_dir is None:
            return
        import csv
        import os

        path = self.decisions_path = os.path.join(log_dir, "decisions.csv")
        names = view_names([*self.hparams.shallow_poolings, "main"])
        new = not os.path.isfile(path)
        os.makedirs(log_dir, exist_ok=True)
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(TABLE_COLUMNS)
            for epoch, c, view, *values in self.state.table:
                writer.writerow([epoch, c, names[view], *(f"{v:.6g}" if isinstance(v, float) else v for v in values)])

    def _warn_if_undetectable(self) -> None:
        message = blind_spot(float(self.state.detectable), self.num_classes)
        if message is not None:
            rank_zero_warn(message)

    # ---- after fit: every sample ever flagged or isolated, for review ---------------------------
    def on_fit_end(self) -> None:
        log_dir = self.trainer.log_dir  # a collective call: every rank
        if self.trainer.is_global_zero and self.trainer.logger is not None and log_dir is not None:
            self.write_suspects(f"{log_dir}/suspects.csv")

    def write_suspects(self, path: str) -> None:
        """Write one CSV row per training sample ever flagged (``flag_count > 0``) or isolated now, highest
        score first.

        Columns: ``index``, the dataset's ``ids`` when it has that attribute, ``source_index`` and
        ``source`` (the sample's position and origin in the user's data) when it has ``source_index`` and
        ``sources``, ``score`` (the within-class z of the view the last cut used), ``given``, ``recovered``,
        ``epochs_flagged``, ``first_flagged`` (epoch), ``isolated`` (now). Reads the synced state bank only.
        """
        import csv
        import os

        s = self.state
        score = s.scores()[max(int(s.view), 0)].nan_to_num(nan=float("-inf")).cpu()  # [N]
        index = torch.nonzero((s.flag_count > 0) | s.isolated).flatten().cpu()
        index = index[torch.sort(score[index], descending=True, stable=True).indices]
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
