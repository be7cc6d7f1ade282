"""The timing command's mechanics: paired fits in swapped order, ratios and RSS per setting, the
subprocess protocol; no wall-clock assertion."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from e2abl_lightning.bench import timing


def test_run_pairs_the_fits_in_swapped_order_and_reports_ratios() -> None:
    calls = []
    fake = {"no_defense": (10.0, 100.0), "e2abl": (11.0, 110.0)}

    def measure(setting: str, defense: str, epochs: int | None) -> dict[str, float]:
        calls.append((setting, defense, epochs))
        seconds, rss = fake[defense]
        seconds *= 1 + len(calls) / 100
        return {"fit_seconds": seconds, "fit_cpu_seconds": seconds / 2, "peak_rss_mib": rss, "epochs": 2}

    table = timing.run(["japanesevowels", "osuleaf"], 3, 2, measure, lambda line: None)
    assert [d for _, d, _ in calls[:6]] == ["no_defense", "e2abl", "e2abl", "no_defense", "no_defense", "e2abl"]
    assert [s for s, _, _ in calls] == ["japanesevowels"] * 6 + ["osuleaf"] * 6
    assert {e for _, _, e in calls} == {2}
    rows = table.splitlines()[2:]
    assert len(rows) == 2 and rows[0].startswith("| japanesevowels | 2 |")
    # each repetition's ratio from its own pair: 11 * 1.02 / (10 * 1.01), then 11 * 1.03 / (10 * 1.04), ...
    assert "| 1.10 (1.11, 1.09, 1.11) | 1.10 (1.11, 1.09, 1.11) |" in rows[0]
    assert rows[0].endswith("| 100 ± 0 | 110 ± 0 | 1.10 |")


def test_measure_in_subprocess_reads_the_child_result_and_reports_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    result = {"fit_seconds": 1.5, "peak_rss_mib": 900.0, "epochs": 1.0}
    commands, kwargs_seen = [], []

    def fake_run(cmd: list[str], **kwargs: object) -> SimpleNamespace:
        commands.append(cmd)
        kwargs_seen.append(kwargs)
        return SimpleNamespace(returncode=0, stdout=f"noise\n{timing._MARK}{json.dumps(result)}\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert timing.measure_in_subprocess("osuleaf", "e2abl", 1) == result
    assert commands[0][1:7] == ["-m", "e2abl_lightning.bench.timing", "--one-fit", "osuleaf", "e2abl", "1"]
    assert kwargs_seen[0]["env"]["OMP_NUM_THREADS"] == "1"

    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: SimpleNamespace(returncode=1, stdout="", stderr="boom"))
    with pytest.raises(RuntimeError, match="e2abl fit of osuleaf failed:\nboom"):
        timing.measure_in_subprocess("osuleaf", "e2abl", 1)


def test_child_prints_one_marked_result(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    seen = []

    def fake_fit(setting: str, defense: str, epochs: int | None, out: object, profile: bool) -> dict[str, float]:
        seen.append((setting, defense, epochs, profile))
        return {"fit_seconds": 2.0, "peak_rss_mib": 800.0, "epochs": 40.0}

    monkeypatch.setattr(timing, "fit_once", fake_fit)
    timing.main(["--one-fit", "fashionmnist", "no_defense", "0", "--out", "x"])
    timing.main(["--one-fit", "osuleaf", "e2abl", "3", "--out", "x", "--profile"])
    assert seen == [("fashionmnist", "no_defense", None, False), ("osuleaf", "e2abl", 3, True)]  # 0: the suite's
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line.removeprefix(timing._MARK))["fit_seconds"] == 2.0


def test_profile_table_ranks_actions_by_extra_time_and_derives_the_optimiser_update() -> None:
    base = {
        "fit_seconds": 10.0,
        "actions": {
            "[Strategy]S.training_step": 3.0,
            "[Strategy]S.backward": 2.0,
            "[LightningModule]model.optimizer_step": 6.0,
            "[LightningModule]model.on_train_batch_end": 0.0,
        },
    }
    ours = {
        "fit_seconds": 12.5,
        "actions": {
            "[Strategy]S.training_step": 3.5,
            "[Strategy]S.backward": 2.25,
            "[LightningModule]model.optimizer_step": 7.0,
            "[LightningModule]model.on_train_batch_end": 1.5,
            "[Callback]New.setup": 0.1,
        },
    }
    lines = timing.profile_table("jv", base, ours, 3).splitlines()
    assert lines[0] == "jv: fit 10.0 s undefended, 12.5 s E2ABL (+2.5 s)"
    rows = lines[4:]
    assert rows == [
        "| [LightningModule]model.on_train_batch_end | 0.00 | 1.50 | +1.50 |",
        "| [LightningModule]model.optimizer_step | 6.00 | 7.00 | +1.00 |",
        "| [Strategy]S.training_step | 3.00 | 3.50 | +0.50 |",
    ]
    full = timing.profile_table("jv", base, ours, 10)
    # the update alone: 7 - 3.5 - 2.25 = 1.25 against 6 - 3 - 2 = 1
    assert "| optimiser update (optimizer_step less its step and backward) | 1.00 | 1.25 | +0.25 |" in full
    assert "| [Callback]New.setup | 0.00 | 0.10 | +0.10 |" in full


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        timing.main(["--repeats", "0"])
    with pytest.raises(SystemExit):
        timing.main(["--settings", "cifar10"])
    with pytest.raises(SystemExit):
        timing.main(["--threads", "0"])
    with pytest.raises(SystemExit):
        timing.main(["--profile", "--top", "0"])
