"""ABL, anti-backdoor learning, as one LightningModule: isolate, fine-tune and unlearn in one ``fit``.

Li, Lyu, Koren, Lyu, Li, Ma, "Anti-Backdoor Learning: Training Clean Models on Poisoned Data",
NeurIPS 2021, arXiv 2110.11571 (official code: github.com/bboylyg/ABL). The three phases, by epoch:

0. isolation, ``T_te`` epochs: descend LGA ``sign(L - gamma) * L`` (or Flooding) of the batch-mean CE;
   at its last batch, per-sample CE over the whole training set (eval mode, no augmentation) and the
   lowest ``isolation_ratio`` are isolated (stable sort, ties by index);
1. fine-tuning: plain CE on the samples not isolated (isolated ones get weight 0, the loader is
   unchanged); the optimiser state is reset first, as the official unlearning script builds a fresh one;
2. unlearning: gradient ascent ``-CE`` on batches made of isolated samples only (no augmentation),
   in train mode, one optimiser step per ``unlearn_batch_size`` of them, as the official code steps
   through its isolated-sample loader; the training loader's batches only pace these steps. Batches
   of poisons alone matter: BatchNorm normalises them with their own statistics, which hides the
   trigger's shared activations, so their loss is far from zero and the ascent has a gradient to
   follow. Its first epoch may only evaluate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from e2abl_lightning.metrics.functional import isolation_precision_recall
from e2abl_lightning.models.backbones import BackboneFactory
from e2abl_lightning.models.base import BackdoorClassifier
from e2abl_lightning.models.e2abl.loss import lga

#: (isolation, fine-tuning, unlearning) epochs of each preset: the official code's and BackdoorBench's.
SCHEDULES: dict[str, tuple[int, int, int]] = {"official": (10, 60, 5), "common": (20, 60, 20)}
PHASE_ISOLATION, PHASE_FINETUNE, PHASE_UNLEARN = 0, 1, 2

__all__ = [
    "ABL",
    "SCHEDULES",
    "abl_phase",
    "ascent_losses",
    "flooding",
    "isolate_lowest",
    "isolation_objective",
    "lga",
    "resolve_schedule",
]


# ---- pure functions ---------------------------------------------------------------------------------
def flooding(loss: Tensor, level: float) -> Tensor:
    """Flooding (Ishida et al., 2020), ABL's alternative isolation loss: ``|L - b| + b``."""
    return (loss - level).abs() + level


def isolation_objective(batch_loss: Tensor, kind: str, gamma: float = 0.5, flood_level: float = 0.5) -> Tensor:
    """ABL's phase-0 objective on the batch-mean loss: LGA ``sign(L - gamma) * L`` or Flooding."""
    if kind == "lga":
        return lga(batch_loss, gamma)
    if kind == "flooding":
        return flooding(batch_loss, flood_level)
    raise ValueError(f"isolation_loss={kind!r} is not allowed; choose one of ('lga', 'flooding')")


def isolate_lowest(losses: Tensor, ratio: float) -> Tensor:
    """Mask of the ``max(1, floor(ratio * N))`` lowest losses, ``[N]`` bool (stable sort: ties by index)."""
    n = losses.numel()
    k = min(n, max(1, int(math.floor(ratio * n + 1e-9))))
    order = torch.sort(losses, stable=True).indices[:k]  # ties -> lower index
    mask = torch.zeros(n, dtype=torch.bool, device=losses.device)
    mask[order] = True
    return mask


def ascent_losses(ce: Tensor, ceiling: float | None = None) -> Tensor:
    """Per-sample unlearning loss ``-CE``; with a ``ceiling``, ``-min(CE, ceiling)`` (no gradient above it)."""
    return -(ce if ceiling is None else ce.clamp(max=ceiling))


def resolve_schedule(
    schedule: str,
    isolation_epochs: int | None = None,
    finetune_epochs: int | None = None,
    unlearning_epochs: int | None = None,
) -> tuple[int, int, int]:
    """(isolation, fine-tuning, unlearning) epochs of a preset, or the three arguments for ``"custom"``."""
    given = {"isolation_epochs": isolation_epochs, "finetune_epochs": finetune_epochs}
    given["unlearning_epochs"] = unlearning_epochs
    if schedule in SCHEDULES:
        set_args = [k for k, v in given.items() if v is not None]
        if set_args:
            raise ValueError(
                f"{', '.join(set_args)} given with schedule={schedule!r}, whose epochs are fixed at "
                f"{SCHEDULES[schedule]} (isolation/fine-tuning/unlearning); use schedule='custom' to set them"
            )
        return SCHEDULES[schedule]
    if schedule != "custom":
        raise ValueError(f"schedule={schedule!r} is not allowed; choose one of ('official', 'common', 'custom')")
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"schedule='custom' needs {', '.join(missing)} (e.g. 10, 25 and 5 for a 40-epoch run)")
    for name, value, low in (
        ("isolation_epochs", isolation_epochs, 1),
        ("finetune_epochs", finetune_epochs, 0),
        ("unlearning_epochs", unlearning_epochs, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    return int(isolation_epochs), int(finetune_epochs), int(unlearning_epochs)  # type: ignore[arg-type]


def abl_phase(epoch: int, schedule: tuple[int, int, int]) -> int:
    """Phase of a 0-based epoch: 0 isolation, 1 fine-tuning, 2 unlearning (and any epoch after)."""
    isolation, finetune, _ = schedule
    if epoch < isolation:
        return PHASE_ISOLATION
    if epoch < isolation + finetune:
        return PHASE_FINETUNE
    return PHASE_UNLEARN


# ---- the LightningModule ----------------------------------------------------------------------------
class ABL(BackdoorClassifier):
    """Anti-backdoor learning (Li et al., NeurIPS 2021, arXiv 2110.11571) with all phases in one ``fit``.

    Epochs ``[0, T)`` isolate, ``[T, T + F)`` fine-tune on the non-isolated samples and
    ``[T + F, T + F + U)`` unlearn the isolated ones (see the module docstring). Samples are never
    dropped from the loader: each phase masks by loss weights, and a batch with no weighted sample
    takes no optimiser step. Epochs past the schedule only evaluate. The isolated mask is a persistent
    buffer, so a checkpoint resumes with the same isolated set. Oracle keys of the batch contract
    (``poisoned``) feed the ``isolation/*`` metrics only; the algorithm reads ``input``, ``target``
    and ``index``. In an unlearning epoch the first ``ceil(isolated / unlearn_batch_size)`` loader
    batches each take one ascent step on a batch of isolated samples; the others take none.

    Args:
        backbone: callable ``(input_shape, num_classes) -> nn.Module``.
        num_classes: number of classes (linked from the datamodule).
        input_shape: one sample's shape (linked from the datamodule).
        optimizer: optimiser callable (one optimiser for every phase).
        scheduler: optional LR scheduler callable; ``finetune_lr``/``unlearn_lr`` override its lr in
            their phases.
        schedule: ``"official"`` 10/60/5 epochs (isolation/fine-tuning/unlearning, the official code),
            ``"common"`` 20/60/20 (BackdoorBench), or ``"custom"`` (the three epoch arguments).
        isolation_epochs: ``T_te``, only with ``schedule="custom"``.
        finetune_epochs: fine-tuning epochs (0 skips the phase), only with ``schedule="custom"``.
        unlearning_epochs: unlearning epochs, only with ``schedule="custom"``.
        isolation_loss: ``"lga"`` ``sign(L - gamma) * L`` or ``"flooding"`` ``|L - b| + b``, on the
            batch-mean CE.
        lga_gamma: LGA threshold ``gamma`` (0.5 in the paper).
        flooding_level: flood level ``b`` (0.5 in the paper).
        isolation_ratio: share ``p`` of the training set isolated (1% in the paper); at least one
            sample is isolated, so on small sets raise it (1% of 180 samples is 1 sample).
        finetune_lr: lr of the fine-tuning phase (0.1 for SGD in the official code); None keeps the
            optimiser's (and scheduler's) lr unless milestones are given.
        finetune_lr_milestones: fine-tuning epochs (counted from the phase start) at which the lr is
            multiplied by ``finetune_lr_gamma`` (official: ``[40]``).
        finetune_lr_gamma: decay factor at each milestone.
        unlearn_lr: lr of the unlearning phase (5e-4 in the official code); None keeps the current lr.
        unlearn_batch_size: isolated samples per unlearning batch and step (the official
            isolated-sample loader uses the training batch size); None uses the training loader's.
        unlearn_loss_ceiling: stop ascending a sample once its CE passes this (None: unbounded, as in
            the official code); a guard against divergence.
        unlearn_eval_first: the first unlearning epoch only evaluates (as the official code).
        reset_optimizer_after_isolation: clear the optimiser state (momentum, Adam moments) when
            fine-tuning starts, as the official code builds a new optimiser after isolation.
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        num_classes: int,
        input_shape: tuple[int, ...],
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        schedule: Literal["official", "common", "custom"] = "official",
        isolation_epochs: int | None = None,
        finetune_epochs: int | None = None,
        unlearning_epochs: int | None = None,
        isolation_loss: Literal["lga", "flooding"] = "lga",
        lga_gamma: float = 0.5,
        flooding_level: float = 0.5,
        isolation_ratio: float = 0.01,
        finetune_lr: float | None = None,
        finetune_lr_milestones: tuple[int, ...] = (),
        finetune_lr_gamma: float = 0.1,
        unlearn_lr: float | None = 5e-4,
        unlearn_batch_size: int | None = None,
        unlearn_loss_ceiling: float | None = None,
        unlearn_eval_first: bool = True,
        reset_optimizer_after_isolation: bool = True,
    ) -> None:
        super().__init__(backbone, num_classes, input_shape, optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.schedule = resolve_schedule(schedule, isolation_epochs, finetune_epochs, unlearning_epochs)
        if isolation_loss not in ("lga", "flooding"):
            raise ValueError(f"isolation_loss={isolation_loss!r} is not allowed; choose one of ('lga', 'flooding')")
        if not lga_gamma > 0:
            raise ValueError(f"lga_gamma={lga_gamma} must be positive (the paper uses 0.5)")
        if not flooding_level > 0:
            raise ValueError(f"flooding_level={flooding_level} must be positive (the paper uses 0.5)")
        if not 0.0 < isolation_ratio < 1.0:
            raise ValueError(f"isolation_ratio={isolation_ratio} must be in (0, 1), e.g. 0.01 (the paper's 1%)")
        for name, lr in (("finetune_lr", finetune_lr), ("unlearn_lr", unlearn_lr)):
            if lr is not None and not lr > 0:
                raise ValueError(f"{name}={lr} must be positive, or None to keep the optimiser's lr")
        milestones = tuple(int(m) for m in finetune_lr_milestones)
        if any(m < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise ValueError(
                f"finetune_lr_milestones={list(finetune_lr_milestones)} must be increasing epochs >= 1 "
                "counted from the start of fine-tuning, e.g. [40]"
            )
        if milestones and milestones[-1] >= self.schedule[1]:
            raise ValueError(
                f"finetune_lr_milestones={list(milestones)} must lie inside the {self.schedule[1]} fine-tuning epochs"
            )
        if not 0.0 < finetune_lr_gamma <= 1.0:
            raise ValueError(f"finetune_lr_gamma={finetune_lr_gamma} must be in (0, 1], e.g. 0.1")
        if unlearn_batch_size is not None and unlearn_batch_size < 1:
            raise ValueError(f"unlearn_batch_size={unlearn_batch_size} must be >= 1, or None for the batch size")
        if unlearn_loss_ceiling is not None and not unlearn_loss_ceiling > 0:
            raise ValueError(f"unlearn_loss_ceiling={unlearn_loss_ceiling} must be positive, or None for no guard")
        if unlearn_eval_first and self.schedule[2] < 2:
            raise ValueError(
                f"unlearning_epochs={self.schedule[2]} with unlearn_eval_first=True leaves no ascent epoch; "
                "use at least 2 unlearning epochs or unlearn_eval_first=False"
            )
        self.isolation_loss = isolation_loss
        self.lga_gamma = float(lga_gamma)
        self.flooding_level = float(flooding_level)
        self.isolation_ratio = float(isolation_ratio)
        self.finetune_lr = finetune_lr
        self.finetune_lr_milestones = milestones
        self.finetune_lr_gamma = float(finetune_lr_gamma)
        self.unlearn_lr = unlearn_lr
        self.unlearn_batch_size = unlearn_batch_size
        self.unlearn_loss_ceiling = unlearn_loss_ceiling
        self.unlearn_eval_first = bool(unlearn_eval_first)
        self.reset_optimizer_after_isolation = bool(reset_optimizer_after_isolation)
        self.register_buffer("isolation_decided", torch.tensor(False))
        self._resize_state(0)
        self._initial_lrs: list[float] = []
        self._step_now = True  # take the optimiser step for the current batch
        self._unlearn_chunks: list[Tensor] = []  # this epoch's unlearning batches (isolated-set rows)
        self._unlearn_rows: Tensor | None = None  # the isolated rows that _unlearn_x/_unlearn_y hold
        self._unlearn_x: Tensor | None = None  # the isolated samples' inputs, no augmentation
        self._unlearn_y: Tensor | None = None  # their given labels

    # ---- schedule ---------------------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        """Epochs of the whole schedule (isolation + fine-tuning + unlearning)."""
        return sum(self.schedule)

    def phase(self, epoch: int | None = None) -> int:
        """Phase (0 isolation, 1 fine-tuning, 2 unlearning) of ``epoch`` (default: the current one)."""
        return abl_phase(self.current_epoch if epoch is None else epoch, self.schedule)

    def ascends(self, epoch: int | None = None) -> bool:
        """Whether ``epoch`` takes unlearning steps (not the evaluation-only first one, not past the end)."""
        epoch = self.current_epoch if epoch is None else epoch
        start = self.schedule[0] + self.schedule[1]
        first = start + (1 if self.unlearn_eval_first else 0)
        return first <= epoch < self.total_epochs

    def updates(self, epoch: int) -> bool:
        """Whether ``epoch`` trains at all (False for the evaluation-only unlearning epoch and after the end)."""
        return epoch < self.schedule[0] + self.schedule[1] or self.ascends(epoch)

    # ---- state: the isolated mask ------------------------------------------------------------------
    def _resize_state(self, n: int) -> None:
        device = self.isolation_decided.device
        self.register_buffer("isolated", torch.zeros(n, dtype=torch.bool, device=device))
        self.register_buffer("isolation_scores", torch.full((n,), float("nan"), device=device))
        # oracle flags (metrics only): 1 poisoned, 0 clean, -1 unseen; never read by the algorithm
        self.register_buffer("oracle_poisoned", torch.full((n,), -1, dtype=torch.long, device=device), persistent=False)

    @property
    def num_samples(self) -> int:
        return int(self.isolated.shape[0])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        isolated = checkpoint["state_dict"].get("isolated")
        if isolated is not None and isolated.shape[0] != self.num_samples:
            self._resize_state(int(isolated.shape[0]))

    def on_fit_start(self) -> None:
        max_epochs = self.trainer.max_epochs
        names = "isolation {} + fine-tuning {} + unlearning {}".format(*self.schedule)
        smoke_run = bool(self.trainer.fast_dev_run)  # a one-batch check of the wiring, not a schedule
        if max_epochs is not None and 0 <= max_epochs < self.total_epochs and not smoke_run:
            raise ValueError(
                f"trainer.max_epochs={max_epochs} is smaller than ABL's schedule of {self.total_epochs} epochs "
                f"({names}, schedule={self.hparams.schedule!r}): set trainer.max_epochs={self.total_epochs}, or use "
                f"schedule='custom' with isolation_epochs/finetune_epochs/unlearning_epochs summing to {max_epochs}"
            )
        if (max_epochs is None or max_epochs < 0 or max_epochs > self.total_epochs) and not smoke_run:
            warnings.warn(
                f"trainer.max_epochs={max_epochs} is larger than ABL's schedule of {self.total_epochs} epochs "
                f"({names}): the epochs after it only evaluate; set trainer.max_epochs={self.total_epochs}",
                UserWarning,
                stacklevel=2,
            )
        if self.trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"trainer.accumulate_grad_batches={self.trainer.accumulate_grad_batches}: ABL accumulates its own "
                "unlearning gradients (unlearn_batch_size); use accumulate_grad_batches=1"
            )

    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        n = len(loader.dataset) if loader is not None else 0
        if self.num_samples != n:
            if bool(self.isolation_decided):
                raise ValueError(
                    f"the checkpoint isolated samples of a {self.num_samples}-sample training set but the training "
                    f"set has {n}: resume with the dataset the checkpoint was trained on"
                )
            self._resize_state(n)
        if self.current_epoch >= self.schedule[0] and not bool(self.isolation_decided):
            warnings.warn(
                f"resuming at epoch {self.current_epoch}, past the {self.schedule[0]} isolation epochs, with no "
                "isolated set: isolating now with the current model",
                UserWarning,
                stacklevel=2,
            )
            self.isolate()

    # ---- optimiser: per-phase lr and step control ------------------------------------------------
    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        optimizer = config["optimizer"] if isinstance(config, dict) else config
        self._initial_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        return config

    def phase_lr(self, epoch: int, base_lr: float) -> float | None:
        """Learning rate this module imposes at ``epoch`` (None: leave the optimiser's)."""
        phase = self.phase(epoch)
        if phase == PHASE_FINETUNE and (self.finetune_lr is not None or self.finetune_lr_milestones):
            base = self.finetune_lr if self.finetune_lr is not None else base_lr
            passed = sum(1 for m in self.finetune_lr_milestones if epoch - self.schedule[0] >= m)
            return base * self.finetune_lr_gamma**passed
        if phase == PHASE_UNLEARN and self.unlearn_lr is not None:
            return self.unlearn_lr
        return None

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        for i, optimizer in enumerate(self.trainer.optimizers):
            if self.reset_optimizer_after_isolation and epoch == self.schedule[0] and self.schedule[1] > 0:
                optimizer.state.clear()  # the official code fine-tunes with a freshly built optimiser
            for j, group in enumerate(optimizer.param_groups):
                base = self._initial_lrs[j] if i == 0 and j < len(self._initial_lrs) else float(group["lr"])
                lr = self.phase_lr(epoch, base)
                if lr is not None:
                    group["lr"] = lr
        self._unlearn_chunks = []
        if self.ascends(epoch):
            self.prepare_unlearning(epoch)

    def prepare_unlearning(self, epoch: int) -> None:
        """Cut a seeded shuffle of the isolated samples into this epoch's unlearning batches.

        The samples (no augmentation) are read from the training set once per isolated set, not
        every epoch. The shuffle is seeded by the epoch, so every DDP rank cuts the same batches;
        there are at most as many as the training loader has batches, which pace the steps.
        """
        loader = self.trainer.train_dataloader
        batch_size = int(self.unlearn_batch_size or getattr(loader, "batch_size", None) or 1)
        rows = torch.nonzero(self.isolated.cpu()).flatten()  # [M] training-set indices
        if rows.numel() == 0:
            return
        if self._unlearn_rows is None or not torch.equal(rows, self._unlearn_rows):
            with self._eval_view(loader.dataset) as dataset:
                samples = [dataset[int(i)] for i in rows]
            self._unlearn_x = torch.stack([torch.as_tensor(s["input"]) for s in samples]).to(self.device)
            self._unlearn_y = torch.stack([torch.as_tensor(s["target"]) for s in samples]).long().to(self.device)
            self._unlearn_rows = rows
        order = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(epoch))
        steps = min(math.ceil(rows.numel() / batch_size), max(1, int(self.trainer.num_training_batches)))
        self._unlearn_chunks = [c for c in torch.tensor_split(order, steps) if c.numel()]

    def _global_sum(self, value: int) -> int:
        t = torch.tensor(float(value), device=self.device)
        return int(round(float(self.trainer.strategy.reduce(t, reduce_op="sum"))))

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Decide, before the step, whether this batch steps and whether its backward starts from zero."""
        index = batch["index"]
        if int(index.numel()) and (int(index.max()) >= self.num_samples or int(index.min()) < 0):
            raise ValueError(
                f"batch index {int(index.max())} is outside the {self.num_samples} training samples; the training "
                "set must give dense indices 0..N-1 under the key 'index'"
            )
        phase = self.phase()
        if self.current_epoch >= self.total_epochs:
            self._step_now = False
        elif phase == PHASE_ISOLATION:
            self._step_now = True
        elif phase == PHASE_FINETUNE:
            self._step_now = self._global_sum(int((~self.isolated[index]).sum())) > 0
        elif not self.ascends():
            self._step_now = False
        else:
            self._step_now = batch_idx < len(self._unlearn_chunks)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        if self._step_now:
            optimizer.step(closure=optimizer_closure)
        elif optimizer_closure is not None:
            optimizer_closure()  # forward (for the logs) and backward, no step

    # ---- one step -------------------------------------------------------------------------------------
    def phase_loss(self, ce: Tensor, index: Tensor, epoch: int) -> Tensor:
        """The scalar loss of one loader batch at ``epoch`` from its per-sample CE ``[B]`` and ``index`` ``[B]``.

        Isolation: LGA/Flooding of the batch mean; fine-tuning: mean CE over the non-isolated samples;
        unlearning (its steps use :meth:`unlearning_step`, not the loader's batch) and past the schedule: 0.
        """
        phase = self.phase(epoch)
        if epoch >= self.total_epochs or phase == PHASE_UNLEARN:
            return 0.0 * ce.sum()
        if phase == PHASE_ISOLATION:
            return isolation_objective(ce.mean(), self.isolation_loss, self.lga_gamma, self.flooding_level)
        weight = (~self.isolated[index]).float()  # [B]
        return (weight * ce).sum() / weight.sum().clamp(min=1)

    def unlearning_step(self, batch_idx: int) -> Tensor:
        """``-CE`` averaged over the ``batch_idx``-th unlearning batch.

        Loader batches past the last unlearning batch take no step; they return a zero loss that
        still reaches every parameter, as DDP needs the same backward on every rank (Lightning
        refuses a skipped ``training_step`` there).

        Under DDP each rank takes a strided share of the batch and scales its sum so that the
        gradient average over ranks is the batch mean (a batch smaller than the world: every rank
        takes all of it).
        """
        if batch_idx >= len(self._unlearn_chunks):
            return 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
        chunk = self._unlearn_chunks[batch_idx]
        rank, world = self.trainer.global_rank, self.trainer.world_size
        part, scale = (chunk[rank::world], world) if chunk.numel() >= world else (chunk, 1)
        part = part.to(self._unlearn_x.device)
        logits = self(self._unlearn_x[part])  # [b, K], train mode: BatchNorm uses this batch's statistics
        ce = F.cross_entropy(logits.float(), self._unlearn_y[part], reduction="none")  # [b]
        loss = scale * ascent_losses(ce, self.unlearn_loss_ceiling).sum() / chunk.numel()
        n = int(part.numel())
        self.log("train/unlearn_ce", ce.detach().mean(), on_step=False, on_epoch=True, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.ascends():
            return self.unlearning_step(batch_idx)
        x, y, index = batch["input"], batch["target"], batch["index"]
        if self.updates(self.current_epoch):
            logits = self(x)  # [B, K]
        else:  # an evaluation-only epoch: no step, and no change of BatchNorm statistics either
            self.eval()
            try:
                logits = self(x)
            finally:
                self.train()
        ce = F.cross_entropy(logits, y, reduction="none")  # [B]
        loss = self.phase_loss(ce, index, self.current_epoch)
        if "poisoned" in batch:  # oracle: metrics only
            self.oracle_poisoned[index] = batch["poisoned"].long().to(self.oracle_poisoned.device)
        b = y.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=b)
        self.log("train/ce", ce.mean(), on_step=False, on_epoch=True, batch_size=b)
        return loss

    # ---- the isolation decision and per-epoch logs (at the last batch: before validation/checkpoint) ---
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not (self.trainer.is_last_batch or batch_idx + 1 >= self.trainer.num_training_batches):
            return
        if self.current_epoch == self.schedule[0] - 1 and not bool(self.isolation_decided):
            self.isolate()
        self.log_epoch()

    @contextmanager
    def _eval_view(self, dataset: Any) -> Iterator[Any]:
        """The training set with the datamodule's eval transform (no augmentation) while inside."""
        if dataset is None:
            raise ValueError("ABL needs trainer.train_dataloader to be a DataLoader with a .dataset to read")
        eval_tf = getattr(getattr(self.trainer, "datamodule", None), "eval_transform", None)
        swap = callable(eval_tf) and hasattr(dataset, "transform")
        saved = dataset.transform if swap else None
        try:
            if swap:
                dataset.transform = eval_tf()
            yield dataset
        finally:
            if swap:
                dataset.transform = saved

    @torch.no_grad()
    def score_training_set(self) -> Tensor:
        """Per-sample CE over the training set in eval mode with the datamodule's eval transform, ``[N]``.

        Under DDP each rank scores a strided shard and the results are summed across ranks (each sample
        is scored exactly once, so the sum is exact and every rank gets the same values).
        """
        loader = self.trainer.train_dataloader
        datamodule = getattr(self.trainer, "datamodule", None)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        was_training = self.training
        with self._eval_view(getattr(loader, "dataset", None)) as dataset:
            n = len(dataset)
            losses = torch.zeros(n, device=self.device)
            poisoned = torch.zeros(n, device=self.device)
            seen_oracle = torch.zeros(n, device=self.device)
            try:
                self.eval()
                shard = Subset(dataset, list(range(rank, n, world)))
                batch_size = int(getattr(datamodule, "eval_batch_size", 256))
                for batch in DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=0):
                    index = torch.as_tensor(batch["index"], device=self.device).long()
                    logits = self(batch["input"].to(self.device))  # [b, K]
                    target = batch["target"].to(self.device)
                    losses[index] = F.cross_entropy(logits.float(), target, reduction="none")
                    if "poisoned" in batch:
                        poisoned[index] = batch["poisoned"].float().to(self.device)
                        seen_oracle[index] = 1.0
            finally:
                self.train(was_training)
        if world > 1:
            losses = self.trainer.strategy.reduce(losses, reduce_op="sum")
            poisoned = self.trainer.strategy.reduce(poisoned, reduce_op="sum")
            seen_oracle = self.trainer.strategy.reduce(seen_oracle, reduce_op="sum")
        oracle = torch.where(seen_oracle > 0, poisoned.round().long(), torch.full_like(poisoned, -1).long())
        self.oracle_poisoned.copy_(torch.where(oracle >= 0, oracle, self.oracle_poisoned))
        return losses

    def isolate(self) -> None:
        """Score the training set and isolate its lowest-loss ``isolation_ratio`` (deterministic)."""
        losses = self.score_training_set()
        if not torch.isfinite(losses).all():
            raise ValueError("ABL's isolation losses hold NaN or inf: the isolation phase diverged; lower the lr")
        if losses.shape[0] != self.num_samples:
            self._resize_state(int(losses.shape[0]))
        self.isolation_scores.copy_(losses)
        self.isolated.copy_(isolate_lowest(losses, self.isolation_ratio))
        self.isolation_decided.fill_(True)

    def isolation_metrics(self) -> dict[str, float]:
        """Isolation precision and recall from the oracle flags (metrics only; empty without them)."""
        known = self.oracle_poisoned >= 0
        if not bool(self.isolation_decided) or not bool(known.any()):
            return {}
        precision, recall = isolation_precision_recall(self.isolated, self.oracle_poisoned)
        return {"isolation/precision": float(precision), "isolation/recall": float(recall)}

    def log_epoch(self) -> None:
        logs = {"train/phase": float(self.phase()), "train/num_isolated": float(self.isolated.sum())}
        logs["train/lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self.trainer.optimizers else 0.0
        logs.update(self.isolation_metrics())
        for name, value in logs.items():
            self.log(name, value, on_step=False, on_epoch=True, batch_size=1, sync_dist=False)
