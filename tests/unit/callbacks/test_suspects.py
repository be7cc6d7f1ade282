"""Every E2ABL fit with a logger writes suspects.csv, matching the state bank."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from e2abl_lightning.callbacks import BackdoorEvalCallback
from e2abl_lightning.metrics.functional import isolation_precision_recall
from tests.helpers import Fit, SeparableSeries, tiny_fit


def test_suspects_csv_matches_state(gunpoint_run: Fit) -> None:
    state = gunpoint_run.model.state
    with (gunpoint_run.log_dir / "suspects.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "index",
        "source_index",
        "source",
        "score",
        "given",
        "recovered",
        "epochs_flagged",
        "first_flagged",
        "isolated",
    ]
    flagged = torch.nonzero(state.flag_count > 0).flatten().tolist()
    assert flagged and sorted(int(r["index"]) for r in rows) == flagged
    head = int(state.head_choice)
    score = state.score_sum[head] / state.score_epochs.clamp(min=1)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores)  # most suspicious first
    for row in rows:
        i = int(row["index"])
        assert int(row["given"]) == int(state.given[i])
        assert int(row["recovered"]) == int(state.recovered[i])
        assert int(row["epochs_flagged"]) == int(state.flag_count[i]) >= 1
        assert int(row["first_flagged"]) == int(state.first_flagged[i]) >= 1  # after the 2 warmup epochs
        assert (row["isolated"] == "True") == bool(state.isolated[i])
        assert abs(float(row["score"]) - float(score[i])) < 1e-4


def test_write_suspects_with_ids(gunpoint_run: Fit, tmp_path: Path, monkeypatch) -> None:
    dataset = gunpoint_run.trainer.train_dataloader.dataset
    monkeypatch.setattr(dataset, "ids", [f"sample-{i}" for i in range(len(dataset))], raising=False)
    path = tmp_path / "sub" / "suspects.csv"
    gunpoint_run.model.write_suspects(str(path))
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert all(r["id"] == f"sample-{r['index']}" for r in rows)


def test_logged_isolation_precision_counts_the_whole_bank(tmp_path: Path) -> None:
    """With a third of each epoch's batches (and ``drop_last``), ``isolation/precision`` in metrics.csv is
    still the share of poisons among every isolated sample, counted by hand from suspects.csv and the
    poison manifest (constructed data whose poisons every run isolates)."""
    logger = CSVLogger(str(tmp_path), name="run")
    dm = SeparableSeries(drop_last=True, batch_size=16)  # 200 samples: 8 left out of every epoch
    fit = tiny_fit(5, dm, [BackdoorEvalCallback(4, 0)], logger=logger, limit_train_batches=0.3, limit_val_batches=1.0)
    with (fit.log_dir / "suspects.csv").open() as handle:
        isolated = {int(r["index"]) for r in csv.DictReader(handle) if r["isolated"] == "True"}
    poisons = set(json.loads((fit.log_dir / "poison_manifest.json").read_text())["poison_indices"])
    assert isolated, "nothing isolated: the check would be empty"
    rows = [r for r in csv.DictReader((fit.log_dir / "metrics.csv").open()) if r.get("isolation/precision")]
    logged = float(rows[-1]["isolation/precision"]), float(rows[-1]["isolation/recall"])
    assert logged == pytest.approx((len(isolated & poisons) / len(isolated), len(isolated & poisons) / len(poisons)))


def test_isolation_precision_recall_by_hand() -> None:
    flagged = torch.tensor([True, True, True, False, False, True])
    oracle = torch.tensor([1, 0, -1, 1, -1, 1])  # -1: never seen, counted in neither denominator
    precision, recall = isolation_precision_recall(flagged, oracle)
    assert (float(precision), float(recall)) == pytest.approx((2 / 3, 2 / 3))
    precision, recall = isolation_precision_recall(flagged, oracle > 0)
    assert (float(precision), float(recall)) == pytest.approx((2 / 4, 2 / 3))
