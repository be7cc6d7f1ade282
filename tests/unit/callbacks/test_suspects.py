"""Every E2ABL fit with a logger writes suspects.csv, matching the state bank."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from tests.helpers import Fit


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
