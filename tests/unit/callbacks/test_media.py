"""Media callbacks: PNG fallback without W&B, pure figures, no effect on training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import Run, short_fit
from PIL import Image

from e2abl_lightning.callbacks import IsolationMonitor, TriggerGallery
from e2abl_lightning.callbacks.media import confusion_figure, gallery_figure, score_histogram_figure


def _valid_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 50


def test_media_pngs_without_wandb(gunpoint_run: Run) -> None:
    media = gunpoint_run.log_dir / "media"
    _valid_png(media / "data_trigger_gallery.png")
    _valid_png(media / "isolation_pr_curve.png")
    decided = sorted(p.name for p in (media / "isolation_score_hist").glob("*.png"))
    assert decided == ["epoch_001.png", "epoch_002.png", "epoch_003.png"]  # warmup 2: decisions from epoch 1
    for path in (media / "isolation_score_hist").glob("*.png"):
        _valid_png(path)
    assert sorted(p.name for p in (media / "val_poisoned_confusion").glob("*.png"))[-1] == "epoch_003.png"


def test_isolated_table_matches_state(gunpoint_run: Run) -> None:
    state = gunpoint_run.model.state
    with (gunpoint_run.log_dir / "media" / "isolation_isolated_samples" / "epoch_003.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == torch.nonzero(state.isolated).flatten().tolist()
    for row in rows:
        i = int(row["index"])
        assert int(row["given"]) == int(state.given[i]) and int(row["recovered"]) == int(state.recovered[i])
        train = gunpoint_run.datamodule.train_set
        assert int(row["true_label"]) == int(train.original_targets[i])
        assert (row["poisoned"] == "True") == bool(train.poisoned[i])


def test_precision_recall_history(gunpoint_run: Run) -> None:
    monitor = next(c for c in gunpoint_run.trainer.callbacks if isinstance(c, IsolationMonitor))
    assert monitor.history["epoch"] == [1, 2, 3]
    train = gunpoint_run.datamodule.train_set
    isolated = gunpoint_run.model.state.isolated
    hits = int((isolated & train.poisoned).sum())
    assert monitor.history["recall"][-1] == pytest.approx(hits / int(train.poisoned.sum()))
    assert monitor.history["precision"][-1] == pytest.approx(hits / max(int(isolated.sum()), 1))


def test_callbacks_do_not_change_training(gunpoint_run: Run, tmp_path: Path) -> None:
    plain = short_fit(tmp_path, [], logger=False)
    watched = gunpoint_run.model.state_dict()
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, watched[key]), key


def test_no_logger_no_media(tmp_path: Path) -> None:
    run = short_fit(tmp_path, [TriggerGallery(), IsolationMonitor(every_n_epochs=1)], epochs=3, logger=False)
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("suspects.csv"))
    assert int(run.model.state.epochs_decided) == 2


def test_gallery_pairs_are_aligned(gunpoint_run: Run) -> None:
    clean, triggered, titles = TriggerGallery(num_samples=2).pairs(gunpoint_run.datamodule)
    assert clean.shape == triggered.shape and clean.shape[0] == len(titles) == 2
    assert not torch.equal(clean, triggered)
    changed = (clean != triggered).any(dim=(0, 1))  # [L]: the static trigger touches a few first steps
    assert 0 < int(changed.sum()) < clean.shape[-1] // 4


def test_figures_for_images_and_histograms() -> None:
    import matplotlib.pyplot as plt

    images = torch.rand(3, 3, 8, 8)
    fig = gallery_figure(images, images.flip(-1), ["a", "b", "c"])
    assert len(fig.axes) == 6
    plt.close(fig)
    fig = gallery_figure(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), ["a", "b"])
    plt.close(fig)
    fig = score_histogram_figure(torch.rand(20), torch.arange(20) < 3, 0.2, "t", oracle=True)
    plt.close(fig)
    fig = confusion_figure(torch.eye(3, dtype=torch.long) * 4, "t", target=0)
    plt.close(fig)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        IsolationMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="num_samples=0"):
        TriggerGallery(num_samples=0)
