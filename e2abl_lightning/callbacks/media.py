"""Media callbacks: trigger gallery, isolation monitor, poisoned-set confusion matrix.

They observe only: rank zero, no gradient, no global RNG, no write to the model or its state bank.
Pictures go to W&B (``wandb.Image`` / ``wandb.Table``) when an active ``WandbLogger`` is attached,
and to PNG/CSV files under ``<trainer.log_dir>/media/`` otherwise (or also, when a CSV or
TensorBoard logger sits beside W&B), so users without W&B see the same pictures.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from torch import Tensor

from e2abl_lightning.metrics.functional import isolation_precision_recall

__all__ = ["IsolationMonitor", "MediaSink", "TriggerGallery"]


def _active_wandb(logger: Any) -> bool:
    """True for a WandbLogger whose run is not disabled (``WANDB_MODE=disabled`` -> False)."""
    if not isinstance(logger, WandbLogger):
        return False
    try:
        return not bool(getattr(logger.experiment, "disabled", False))
    except Exception:  # W&B missing or failing to start: fall back to files
        return False


def run_dir(trainer: L.Trainer) -> Path:
    """``trainer.log_dir`` without its collective broadcast (safe to call on rank zero alone)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    first = trainer.loggers[0]
    folder = first.log_dir if isinstance(first, (CSVLogger, TensorBoardLogger)) else first.save_dir
    return Path(folder if folder is not None else trainer.default_root_dir)


class MediaSink:
    """Where a callback's figures and tables go for one trainer: W&B loggers and/or ``media/`` files."""

    def __init__(self, trainer: L.Trainer) -> None:
        loggers = [] if trainer.fast_dev_run else list(trainer.loggers)  # fast_dev_run logs nothing
        self.wandb = [lg for lg in loggers if _active_wandb(lg)]
        others = [lg for lg in loggers if not isinstance(lg, WandbLogger)]
        self.dir: Path | None = None
        if loggers and (others or not self.wandb):
            self.dir = run_dir(trainer) / "media"
        self.step = trainer.global_step

    @staticmethod
    def _slug(key: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)

    def _path(self, key: str, tag: str | None, suffix: str) -> Path:
        assert self.dir is not None
        path = self.dir / self._slug(key) / f"{tag}{suffix}" if tag else self.dir / f"{self._slug(key)}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def figure(self, key: str, fig: Any, tag: str | None = None, caption: str | None = None) -> None:
        """Log a matplotlib figure under ``key`` (file ``media/<key>/<tag>.png``, or ``media/<key>.png``)."""
        if self.wandb:
            from PIL import Image

            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100)
            buffer.seek(0)
            image = Image.open(buffer).convert("RGB")
            for logger in self.wandb:
                kwargs = {"caption": [caption]} if caption else {}
                logger.log_image(key=key, images=[image], step=self.step, **kwargs)
        if self.dir is not None:
            fig.savefig(self._path(key, tag, ".png"), dpi=100)

    def table(self, key: str, columns: list[str], rows: list[list[Any]], tag: str | None = None) -> None:
        """Log a table under ``key`` (a ``wandb.Table``, or ``media/<key>/<tag>.csv``)."""
        for logger in self.wandb:
            logger.log_table(key=key, columns=columns, data=rows, step=self.step)
        if self.dir is not None:
            with self._path(key, tag, ".csv").open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows(rows)


# ---- figures (pure: tensors in, matplotlib figure out) -----------------------------------------------
def gallery_figure(clean: Tensor, triggered: Tensor, labels: list[str]) -> Any:
    """Clean vs triggered samples: line plots for series ``[k, C, L]``, an image grid for ``[k, C, H, W]``."""
    k = clean.shape[0]
    if clean.dim() == 4:  # images [k, C, H, W]
        fig = Figure(figsize=(1.8 * k, 4))
        axes = fig.subplots(2, k, squeeze=False)
        for j in range(k):
            for row, (name, batch) in enumerate((("clean", clean), ("triggered", triggered))):
                img = batch[j].float()
                lo, hi = float(img.min()), float(img.max())
                img = (img - lo) / max(hi - lo, 1e-8)  # show any normalisation in [0, 1]
                ax = axes[row][j]
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img[:3].permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(name)
                if row == 0:
                    ax.set_title(labels[j], fontsize=8)
    else:  # series [k, C, L] (or [k, L])
        series_c = clean if clean.dim() == 3 else clean.unsqueeze(1)
        series_t = triggered if triggered.dim() == 3 else triggered.unsqueeze(1)
        fig = Figure(figsize=(8, 1.8 * k))

        axes = fig.subplots(k, 1, squeeze=False, sharex=True)
        for j in range(k):
            ax = axes[j][0]
            for c in range(min(series_c.shape[1], 3)):
                ax.plot(series_c[j, c].numpy(), color=f"C{c}", lw=1.2, label="clean" if c == 0 else None)
                ax.plot(series_t[j, c].numpy(), color="red", lw=0.9, ls="--", label="triggered" if c == 0 else None)
            ax.set_title(labels[j], fontsize=8)
        axes[0][0].legend(loc="upper right", fontsize=8)
        axes[-1][0].set_xlabel("time step")
    fig.suptitle("Clean vs triggered samples")
    fig.tight_layout()
    return fig


def score_histogram_figure(score: Tensor, poisoned: Tensor, threshold: float | None, title: str, oracle: bool) -> Any:
    """Histogram of one view's isolation score, poisoned vs clean (or flagged vs not without oracle)."""
    fig = Figure(figsize=(6, 3.5))

    ax = fig.subplots()
    values = score.float()
    lo, hi = float(values.min()), float(values.max())
    bins = torch.linspace(lo, hi if hi > lo else lo + 1.0, 41).numpy()
    names = ("poisoned", "clean") if oracle else ("flagged", "not flagged")
    ax.hist(values[~poisoned].numpy(), bins=bins, alpha=0.6, label=f"{names[1]} ({int((~poisoned).sum())})")
    ax.hist(values[poisoned].numpy(), bins=bins, alpha=0.7, color="red", label=f"{names[0]} ({int(poisoned.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls=":", lw=1, label="flag threshold")
    ax.set_xlabel("within-class score (higher = fitted better than its classmates)")
    ax.set_ylabel("training samples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curve_figure(epochs: list[int], series: dict[str, list[float]], title: str, marker: int | None = None) -> Any:
    """Line plot of a few metrics over epochs, in [0, 1]."""
    fig = Figure(figsize=(6, 3.5))

    ax = fig.subplots()
    for name, values in series.items():
        ax.plot(epochs, values, marker="o", ms=3, label=name)
    if marker is not None:
        ax.axvline(marker, color="gray", ls=":", lw=1, label="target fixed")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: Tensor, title: str, target: int | None = None) -> Any:
    """Confusion matrix (rows: true label, columns: predicted label)."""
    k = matrix.shape[0]
    fig = Figure(figsize=(min(2 + 0.45 * k, 10), min(1.6 + 0.45 * k, 9)))

    ax = fig.subplots()
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if k <= 15:
        peak = max(int(matrix.max()), 1)
        for i in range(k):
            for j in range(k):
                value = int(matrix[i, j])
                if value:
                    color = "white" if value > peak / 2 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted" + (f" (attack target {target})" if target is not None else ""))
    ax.set_ylabel("true label")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---- callbacks ----------------------------------------------------------------------------------------------
class TriggerGallery(L.Callback):
    """At fit start, a few clean samples next to the same samples with the trigger.

    Reads the datamodule's cached validation pair (clean set and its triggered twin), so no trigger
    is run and no random number drawn.

    Args:
        num_samples: how many samples to show.
        enabled: turn the gallery off.
    """

    def __init__(self, num_samples: int = 4, enabled: bool = True) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be at least 1")
        self.num_samples = num_samples
        self.enabled = enabled

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not trainer.loggers:
            return
        pair = self.pairs(getattr(trainer, "datamodule", None))
        if pair is None:
            return
        clean, triggered, labels = pair
        MediaSink(trainer).figure("data/trigger_gallery", gallery_figure(clean, triggered, labels))

    def pairs(self, datamodule: Any) -> tuple[Tensor, Tensor, list[str]] | None:
        """``(clean [k, ...], triggered [k, ...], titles)`` from the validation (or test) pair, or None."""
        for name in ("val_sets", "test_sets"):
            sets = getattr(datamodule, name, None)
            if not sets or len(sets) < 2:
                continue
            clean, poisoned = sets[0], sets[1]
            if len(poisoned) == 0:
                continue
            if len(poisoned) == len(clean):
                keep = torch.ones(len(clean), dtype=torch.bool)
            else:  # all-to-one: the triggered set holds the non-target samples, in order
                keep = clean.original_targets != int(getattr(datamodule, "target_label", 0))
            if int(keep.sum()) != len(poisoned) or not torch.equal(
                clean.original_targets[keep], poisoned.original_targets
            ):
                continue
            k = min(self.num_samples, len(poisoned))
            x_clean = clean.inputs[keep][:k]
            x_trig = poisoned.inputs[:k]
            titles = [
                f"true {int(a)} -> attack label {int(b)}"
                for a, b in zip(poisoned.original_targets[:k], poisoned.targets[:k], strict=True)
            ]
            return x_clean.detach().cpu(), x_trig.detach().cpu(), titles
        return None


class IsolationMonitor(L.Callback):
    """Per-epoch pictures of E2ABL's decision, and the poisoned-set confusion matrix for any model.

    After each decision (read in ``on_train_epoch_end``, once the last batch has decided): the score
    histogram of the chosen shallow head, poisoned vs clean (oracle keys, metrics only), the isolation
    precision/recall curve over epochs with the epoch the suspected target was fixed, and a table of
    the isolated samples. At each validation end, the confusion matrix of the main head on the
    triggered validation set; at test end, on the triggered test set. A model without an
    ``IsolationState`` named ``state`` gets the confusion matrices only.

    Args:
        every_n_epochs: draw every this many epochs (the last epoch is always drawn).
        max_table_rows: cap on the isolated-samples table.
        enabled: turn the monitor off.
    """

    def __init__(self, every_n_epochs: int = 5, max_table_rows: int = 1000, enabled: bool = True) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be at least 1")
        self.every_n_epochs = every_n_epochs
        self.max_table_rows = max_table_rows
        self.enabled = enabled
        self.history: dict[str, list[float]] = {"epoch": [], "precision": [], "recall": []}
        self._target_epoch: int | None = None
        self._drawn_decisions = -1
        self._preds: list[Tensor] = []
        self._truth: list[Tensor] = []

    # ---- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _state(pl_module: L.LightningModule) -> Any:
        state = getattr(pl_module, "state", None)
        return state if state is not None and hasattr(state, "flagged") and hasattr(state, "scores") else None

    def _due(self, trainer: L.Trainer, epoch: int) -> bool:
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch + 1 >= trainer.max_epochs
        return (epoch + 1) % self.every_n_epochs == 0 or last or trainer.should_stop

    # ---- E2ABL decision -------------------------------------------------------------------------
    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = self._state(pl_module)
        if not self.enabled or state is None or int(state.epochs_decided) == 0:
            return
        epoch = trainer.current_epoch
        oracle = state.oracle_poisoned.detach().cpu()  # [N]: 1 poisoned, 0 clean, -1 never seen
        if bool((oracle > 0).any()) and (not self.history["epoch"] or self.history["epoch"][-1] != epoch):
            precision, recall = isolation_precision_recall(state.isolated.detach().cpu(), oracle)
            self.history["epoch"].append(epoch)
            self.history["precision"].append(float(precision))
            self.history["recall"].append(float(recall))
        if self._target_epoch is None and int(state.suspected_target) >= 0:
            self._target_epoch = epoch
        if trainer.loggers and self._due(trainer, epoch):
            self.draw(trainer, pl_module, epoch)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = self._state(pl_module)
        if self.enabled and state is not None and trainer.loggers and int(state.epochs_decided) > 0:
            if int(state.epochs_decided) != self._drawn_decisions:  # stopped between two drawing epochs
                self.draw(trainer, pl_module, max(trainer.current_epoch - 1, 0))
        if state is not None and hasattr(pl_module, "write_suspects"):
            decisions = getattr(pl_module, "decisions_path", None)
            for logger in MediaSink(trainer).wandb:  # suspects.csv and decisions.csv in the W&B run's files
                pl_module.write_suspects(str(Path(logger.experiment.dir) / "suspects.csv"))
                if decisions is not None and Path(decisions).is_file():
                    shutil.copy(decisions, Path(logger.experiment.dir) / "decisions.csv")

    @torch.no_grad()
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        """Histogram, precision/recall curve and isolated-samples table of the current decision."""
        state = self._state(pl_module)
        self._drawn_decisions = int(state.epochs_decided)
        sink = MediaSink(trainer)
        tag = f"epoch_{epoch:03d}"
        view = max(int(state.view), 0)
        score = state.scores()[view].detach().cpu()  # [N], NaN: never seen
        known, truth = state.oracle_poisoned.detach().cpu(), state.oracle_true.detach().cpu()
        oracle = known.numel() > 0 and int(known.max()) >= 0
        seen = torch.isfinite(score) & ((known >= 0) if oracle else True)
        marked = (known > 0) if oracle else state.flagged.detach().cpu()
        flagged = state.flagged.detach().cpu()
        threshold = float(score[flagged & seen].min()) if bool((flagged & seen).any()) else None
        target = int(state.suspected_target)
        title = f"epoch {epoch}, view {view} (within-class z), suspected target " + (
            str(target) if target >= 0 else "-"
        )
        if bool(seen.any()):
            sink.figure(
                "isolation/score_hist",
                score_histogram_figure(score[seen], marked[seen], threshold, title, oracle),
                tag,
                caption=title,
            )
        if self.history["epoch"]:
            fig = curve_figure(
                self.history["epoch"],
                {"precision": self.history["precision"], "recall": self.history["recall"]},
                f"Isolation precision/recall (suspected target {target if target >= 0 else '-'})",
                self._target_epoch,
            )
            sink.figure("isolation/pr_curve", fig)
        isolated = torch.nonzero(state.isolated.detach().cpu()).flatten()[: self.max_table_rows]
        given = state.given.detach().cpu()
        recovered = state.recovered.detach().cpu()
        rows = [
            [
                int(i),
                int(given[i]),
                int(recovered[i]),
                int(truth[i]) if oracle else -1,
                bool(marked[i]) if oracle else None,
            ]
            for i in isolated.tolist()
        ]
        sink.table("isolation/isolated_samples", ["index", "given", "recovered", "true_label", "poisoned"], rows, tag)

    # ---- confusion matrix on the triggered evaluation set -----------------------------------------
    def _reset(self) -> None:
        self._preds, self._truth = [], []

    def _collect(self, outputs: Any, batch: Any, dataloader_idx: int) -> None:
        if dataloader_idx != 1 or not isinstance(outputs, dict) or "preds" not in outputs:
            return
        if not isinstance(batch, dict) or "original_target" not in batch:
            return
        self._preds.append(outputs["preds"].detach().cpu().long())
        self._truth.append(batch["original_target"].detach().cpu().long())

    def _confusion(self, trainer: L.Trainer, pl_module: L.LightningModule, key: str, tag: str | None) -> None:
        if not self._preds:
            return
        k = (
            int(getattr(pl_module, "num_classes", 0))
            or int(max(torch.cat(self._preds).max(), torch.cat(self._truth).max())) + 1
        )
        preds, truth = torch.cat(self._preds).clamp(0, k - 1), torch.cat(self._truth).clamp(0, k - 1)
        matrix = torch.bincount(truth * k + preds, minlength=k * k).reshape(k, k)  # [K, K]
        datamodule = getattr(trainer, "datamodule", None)
        target = getattr(datamodule, "target_label", None)
        title = (
            "Triggered test set"
            if key.startswith("test")
            else f"Triggered validation set, epoch {trainer.current_epoch}"
        )
        MediaSink(trainer).figure(key, confusion_figure(matrix, title, target), tag)
        self._reset()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.enabled and not trainer.sanity_checking and trainer.is_global_zero:
            self._collect(outputs, batch, dataloader_idx)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.enabled and not trainer.sanity_checking and trainer.loggers and self._due(trainer, epoch):
            self._confusion(trainer, pl_module, "val/poisoned_confusion", f"epoch_{epoch:03d}")
        self._reset()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.enabled and trainer.is_global_zero:
            self._collect(outputs, batch, dataloader_idx)

    @rank_zero_only
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and trainer.loggers:
            self._confusion(trainer, pl_module, "test/poisoned_confusion", None)
        self._reset()
