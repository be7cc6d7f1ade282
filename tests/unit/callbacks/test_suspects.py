"""Every E2ABL fit with a logger writes suspects.csv, matching the state bank."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, SubsetRandomSampler

from e2abl_lightning.callbacks import BackdoorEvalCallback
from e2abl_lightning.metrics.functional import isolation_precision_recall
from e2abl_lightning.models.e2abl import E2ABL
from e2abl_lightning.models.e2abl.policy import num_tested, view_names
from e2abl_lightning.models.e2abl.state import TABLE_COLUMNS
from tests.helpers import SMALL_FCN, Fit, SeparableSeries, tiny_fit


@pytest.fixture(scope="module")
def named_run(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    """A logged 5-epoch fit on constructed data on which E2ABL names the target at the end of epoch 3 and
    isolates its poisons (GunPoint's classes are too small for the test to name one in a short fit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logger = CSVLogger(str(tmp_path_factory.mktemp("named_run")), name="run")
    fit = tiny_fit(5, SeparableSeries(target_offset=4.0), logger=logger)
    torch.set_num_threads(threads)
    return fit


def test_suspects_csv_matches_state(named_run: Fit) -> None:
    state = named_run.model.state
    assert int(state.suspected_target) == 0 and int(state.isolated.sum()) > 0
    with (named_run.log_dir / "suspects.csv").open() as handle:
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
    listed = torch.nonzero((state.flag_count > 0) | state.isolated).flatten().tolist()
    assert listed and sorted(int(r["index"]) for r in rows) == listed
    assert int(state.view) >= 0  # a cut was made, in this view
    score = state.scores()[int(state.view)].nan_to_num(nan=float("-inf"))  # never scored: written as -inf
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # most suspicious (fitted best among classmates) first
    first_decision = named_run.model.policy.warmup_epochs - 1
    for row in rows:
        i = int(row["index"])
        assert int(row["given"]) == int(state.given[i])
        assert int(row["recovered"]) == int(state.recovered[i])
        assert int(row["epochs_flagged"]) == int(state.flag_count[i]) >= 1  # an isolated sample was flagged
        assert int(row["first_flagged"]) == int(state.first_flagged[i]) >= first_decision  # not in the warm-up
        assert (row["isolated"] == "True") == bool(state.isolated[i])
        assert float(row["score"]) == pytest.approx(float(score[i]), rel=1e-5, abs=1e-5)


def test_suspects_are_sorted_by_the_cut_views_score_nan_last(tmp_path: Path) -> None:
    """Rows follow the score of the view the last cut used, highest first; a sample never scored (NaN)
    comes last, written as -inf; samples neither flagged nor isolated are left out."""
    model = E2ABL(SMALL_FCN, 2, (1, 16))
    state = model.state
    state.resize(6, 2, 3)
    state.score.copy_(
        torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0], [0.5, float("nan"), 2.0, -1.0, 3.0, 0.0], [0.0] * 6])
    )
    state.view.fill_(1)
    state.flag_count.copy_(torch.tensor([1, 2, 1, 1, 0, 0]))
    state.first_flagged.copy_(torch.tensor([3, 1, 2, 4, -1, -1]))
    state.isolated.copy_(torch.tensor([False, True, False, True, True, False]))
    state.given.copy_(torch.tensor([0, 1, 0, 1, 0, 1]))
    path = tmp_path / "suspects.csv"
    model.write_suspects(str(path))
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == [4, 2, 0, 3, 1]  # view 1: 3.0, 2.0, 0.5, -1.0, NaN
    assert [float(r["score"]) for r in rows] == [3.0, 2.0, 0.5, -1.0, float("-inf")]
    assert [r["isolated"] for r in rows] == ["True", "False", "False", "True", "True"]
    assert [int(r["epochs_flagged"]) for r in rows] == [0, 1, 1, 1, 2]


def test_write_suspects_with_ids(named_run: Fit, tmp_path: Path, monkeypatch) -> None:
    dataset = named_run.trainer.train_dataloader.dataset
    monkeypatch.setattr(dataset, "ids", [f"sample-{i}" for i in range(len(dataset))], raising=False)
    path = tmp_path / "sub" / "suspects.csv"
    named_run.model.write_suspects(str(path))
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(r["id"] == f"sample-{r['index']}" for r in rows)


class _NeverSeen(SeparableSeries):
    """Training batches that never hold 5 of the poisons and 15 clean samples (the dataset still has all
    200), with ``drop_last``: a sample the run never sees has no score, so it is never isolated."""

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        poisoned = loader.dataset.poisoned
        self.skipped = {*poisoned.nonzero().flatten()[:5].tolist(), *(~poisoned).nonzero().flatten()[:15].tolist()}
        kept = [i for i in range(len(loader.dataset)) if i not in self.skipped]
        return DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=SubsetRandomSampler(kept), drop_last=True
        )


def test_logged_isolation_precision_counts_the_whole_bank(tmp_path: Path) -> None:
    """With some samples never in a training batch (and ``drop_last``), ``isolation/precision`` and
    ``isolation/recall`` in metrics.csv are still counted over every training sample, by hand from
    suspects.csv and the poison manifest: recall's denominator holds the poisons the run never saw
    (constructed data whose target every run names)."""
    logger = CSVLogger(str(tmp_path), name="run")
    dm = _NeverSeen(batch_size=16, target_offset=4.0)
    fit = tiny_fit(5, dm, [BackdoorEvalCallback(4, 0)], logger=logger, limit_val_batches=1.0)
    with (fit.log_dir / "suspects.csv").open() as handle:
        isolated = {int(r["index"]) for r in csv.DictReader(handle) if r["isolated"] == "True"}
    poisons = set(json.loads((fit.log_dir / "poison_manifest.json").read_text())["poison_indices"])
    assert isolated, "nothing isolated: the check would be empty"
    assert len(poisons & dm.skipped) == 5 and not isolated & dm.skipped  # never seen, never isolated
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


def test_decisions_csv_holds_every_decided_epochs_class_tests(named_run: Fit) -> None:
    """decisions.csv: one row per decided epoch, class and view; a row passes exactly when the policy's
    rule holds on its own columns (level, effect floor, trapped side, the only class passing in that view),
    at most one class is named per epoch (the last epoch's is the state's target), and the last epoch's
    rows are the state bank's table."""
    model, state = named_run.model, named_run.model.state
    with (named_run.log_dir / "decisions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    k, v = model.num_classes, num_tested(state.score.shape[0])  # two shallow heads and the main one, 3 pairs
    assert tuple(rows[0]) == TABLE_COLUMNS
    epochs = sorted({int(r["epoch"]) for r in rows})
    assert epochs == list(range(model.policy.warmup_epochs - 1, 5)) and len(rows) == len(epochs) * k * v
    assert {r["view"] for r in rows} == set(view_names(["max", "avg", "main"]))
    policy = model.policy
    for epoch in epochs:
        these = [r for r in rows if int(r["epoch"]) == epoch]
        ok = [
            float(r["p"]) < policy.level(k, v) and float(r["dip"]) >= policy.min_share / 4 and r["trapped"] == "True"
            for r in these
        ]
        alone = [sum(o for o, s in zip(ok, these, strict=True) if s["view"] == r["view"]) == 1 for r in these]
        assert [r["passing"] == "True" for r in these] == [o and a for o, a in zip(ok, alone, strict=True)]
    for epoch in epochs:  # at most one named class per epoch, on every view's row; the last is the state's target
        named = {(int(r["class"]), r["view"]) for r in rows if int(r["epoch"]) == epoch and r["named"] == "True"}
        classes = {c for c, _ in named}
        assert len(classes) <= 1 and len(named) == v * len(classes)
    assert classes == ({int(state.suspected_target)} if int(state.suspected_target) >= 0 else set())
    last = [r for r in rows if int(r["epoch"]) == epochs[-1]]
    assert [float(r["p"]) for r in last] == pytest.approx([row[4] for row in state.table], rel=1e-5)
    assert all(0.0 <= float(r["confused_share"]) <= 1.0 for r in rows)
