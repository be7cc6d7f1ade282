"""Media callbacks: PNG fallback without W&B, pure figures, no effect on training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from e2abl_lightning.callbacks import IsolationMonitor, TriggerGallery
from e2abl_lightning.callbacks.media import confusion_figure, gallery_figure, score_histogram_figure
from tests.helpers import Fit, tiny_fit


def _valid_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 50


def test_media_pngs_without_wandb(gunpoint_run: Fit) -> None:
    media = gunpoint_run.log_dir / "media"
    _valid_png(media / "data_trigger_gallery.png")
    _valid_png(media / "isolation_pr_curve.png")
    decided = sorted(p.name for p in (media / "isolation_score_hist").glob("*.png"))
    assert decided == ["epoch_001.png", "epoch_002.png", "epoch_003.png"]  # warmup 2: decisions from epoch 1
    for path in (media / "isolation_score_hist").glob("*.png"):
        _valid_png(path)
    assert sorted(p.name for p in (media / "val_poisoned_confusion").glob("*.png"))[-1] == "epoch_003.png"


def test_isolated_table_matches_state(gunpoint_run: Fit) -> None:
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


def test_precision_recall_history(gunpoint_run: Fit) -> None:
    monitor = next(c for c in gunpoint_run.trainer.callbacks if isinstance(c, IsolationMonitor))
    assert monitor.history["epoch"] == [1, 2, 3]
    train = gunpoint_run.datamodule.train_set
    isolated = gunpoint_run.model.state.isolated
    hits = int((isolated & train.poisoned).sum())
    assert monitor.history["recall"][-1] == pytest.approx(hits / int(train.poisoned.sum()))
    assert monitor.history["precision"][-1] == pytest.approx(hits / max(int(isolated.sum()), 1))


def test_callbacks_do_not_change_training(gunpoint_run: Fit, tmp_path: Path) -> None:
    plain = tiny_fit(4, limit_val_batches=1.0)
    watched = gunpoint_run.model.state_dict()
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, watched[key]), key


def test_no_logger_no_media(tmp_path: Path) -> None:
    run = tiny_fit(3, None, [TriggerGallery(), IsolationMonitor(every_n_epochs=1)], default_root_dir=tmp_path)
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("suspects.csv"))
    assert int(run.model.state.epochs_decided) == 2


def test_gallery_pairs_are_aligned(gunpoint_run: Fit) -> None:
    clean, triggered, titles = TriggerGallery(num_samples=2).pairs(gunpoint_run.datamodule)
    assert clean.shape == triggered.shape and clean.shape[0] == len(titles) == 2
    assert not torch.equal(clean, triggered)
    changed = (clean != triggered).any(dim=(0, 1))  # [L]: the static trigger touches a few first steps
    assert 0 < int(changed.sum()) < clean.shape[-1] // 4


def test_gallery_figure_shows_each_pair() -> None:
    """Images: a clean row over a triggered row, each panel scaled to [0, 1]; series: one panel a sample."""
    clean = torch.rand(3, 3, 8, 8) * 4 - 2  # a normalised range: the panel shows it in [0, 1]
    fig = gallery_figure(clean, clean.flip(-1), ["a", "b", "c"])
    axes = fig.axes
    assert len(axes) == 6 and [ax.get_title() for ax in axes[:3]] == ["a", "b", "c"]
    shown = axes[3].get_images()[0].get_array()  # row 2, column 1: the first triggered image
    expected = clean[0].flip(-1)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert torch.allclose(torch.as_tensor(shown), expected.permute(1, 2, 0), atol=1e-6)
    series = torch.zeros(2, 1, 16)
    triggered = series.clone()
    triggered[:, :, :4] = 1.0
    fig = gallery_figure(series, triggered, ["x", "y"])
    assert len(fig.axes) == 2
    clean_line, triggered_line = fig.axes[1].get_lines()
    assert clean_line.get_ydata().tolist() == [0.0] * 16
    assert triggered_line.get_ydata().tolist() == [1.0] * 4 + [0.0] * 12


def test_score_histogram_counts_each_group() -> None:
    score = torch.arange(20, dtype=torch.float)
    poisoned = torch.arange(20) < 3
    fig = score_histogram_figure(score, poisoned, 2.5, "t", oracle=True)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(labels) == ["clean (17)", "flag threshold", "poisoned (3)"]
    clean_bars, poison_bars = ax.containers
    assert sum(b.get_height() for b in clean_bars) == 17 and sum(b.get_height() for b in poison_bars) == 3
    assert max(b.get_x() for b in poison_bars if b.get_height() > 0) < 3  # the poisons are the low scores
    unflagged = score_histogram_figure(score, poisoned, None, "t", oracle=False).axes[0]
    assert unflagged.get_legend_handles_labels()[1] == ["not flagged (17)", "flagged (3)"]


def test_confusion_figure_writes_each_count_in_its_cell() -> None:
    matrix = torch.tensor([[5, 0, 1], [0, 7, 0], [2, 0, 9]])
    ax = confusion_figure(matrix, "t", target=0).axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert cells == {(0, 0): 5, (0, 2): 1, (1, 1): 7, (2, 0): 2, (2, 2): 9}  # (true row, predicted column)
    assert ax.get_xlabel() == "predicted (attack target 0)"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        IsolationMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="num_samples=0"):
        TriggerGallery(num_samples=0)
