"""``e2abl-report``: a PNG of a real run's CSV logs, one-line errors otherwise."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from e2abl_lightning.report import confusion_epochs, main, make_report, read_decisions, read_metrics
from tests.helpers import Fit

SCRIPT = Path(sys.executable).with_name("e2abl-report")


def test_report_png_from_real_run(gunpoint_run: Fit, tmp_path: Path) -> None:
    series = read_metrics(gunpoint_run.log_dir / "metrics.csv")
    assert sorted(series["val/clean_acc"]) == [0, 1, 2, 3]
    assert {1, 2, 3} <= set(series["isolation/precision"]) and sorted(series["train/num_flagged"]) == [1, 2, 3]
    out = make_report(gunpoint_run.log_dir, tmp_path / "report.png")
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_report_draws_the_class_tests_of_decisions_csv(gunpoint_run: Fit, tmp_path: Path) -> None:
    """A third panel from decisions.csv: each class's smallest adjusted p per decided epoch, the epochs it
    passed and the named target; a run without the file keeps the two panels."""
    rows = list(csv.DictReader((gunpoint_run.log_dir / "decisions.csv").open()))
    smallest, passed, named = read_decisions(gunpoint_run.log_dir / "decisions.csv")
    decided = sorted(read_metrics(gunpoint_run.log_dir / "metrics.csv")["train/num_flagged"])
    assert sorted(smallest) == [0, 1] and all(sorted(v) == decided for v in smallest.values())
    for (c, e), p in {(c, e): p for c, v in smallest.items() for e, p in v.items()}.items():
        these = [r for r in rows if int(r["class"]) == c and int(r["epoch"]) == e]
        assert p == min(float(r["adjusted_p"]) for r in these)
        assert (e in passed[c]) == any(r["passing"] == "True" for r in these)
        assert (named.get(e) == c) == any(r["named"] == "True" for r in these)
    with Image.open(make_report(gunpoint_run.log_dir, tmp_path / "with.png")) as image:
        wide = image.size[0]
    shutil.copytree(gunpoint_run.log_dir, tmp_path / "run", ignore=shutil.ignore_patterns("decisions.csv"))
    with Image.open(make_report(tmp_path / "run", tmp_path / "without.png")) as image:
        assert image.size[0] < wide


def _decisions(path: Path, rows: list[tuple]) -> Path:
    from e2abl_lightning.models.e2abl.state import TABLE_COLUMNS

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        for epoch, c, view, dip, adjusted, trapped, named in rows:
            writer.writerow([epoch, c, view, dip, adjusted / 12, adjusted, trapped, False, named, 0.6])
    return path


def test_confusion_epochs_counts_significant_splits_read_as_confusion_in_classes_never_named(tmp_path: Path) -> None:
    """Per class never named: the epochs in which a view was significant (adjusted p below alpha, dip at
    least the bound) and not trapped. Trapped, weak, small-dip and named classes' rows do not count."""
    rows = [
        (1, 0, "max", 0.2, 1e-4, False, False),  # counts
        (1, 0, "avg", 0.2, 1e-5, False, False),  # same epoch: counted once
        (2, 0, "max", 0.2, 1e-4, False, False),  # counts
        (3, 0, "max", 0.2, 0.5, False, False),  # not significant
        (4, 0, "max", 0.001, 1e-4, False, False),  # dip below the bound
        (1, 1, "max", 0.2, 1e-4, True, False),  # trapped: a trap, not confusion
        (1, 2, "max", 0.2, 1e-4, False, False),  # would count, but class 2 was named later
        (5, 2, "max", 0.2, 1e-4, True, True),
    ]
    counts = confusion_epochs(_decisions(tmp_path / "decisions.csv", rows), alpha=0.2, min_dip=0.0125)
    assert counts == {0: 2}


def test_fit_summary_names_a_class_read_as_confusion_in_two_epochs_or_more(tmp_path: Path) -> None:
    from e2abl_lightning.cli_app import _confusion_lines
    from e2abl_lightning.models.e2abl import IsolationPolicy

    once = [(1, 3, "max", 0.2, 1e-4, False, False)]
    twice = [*once, (2, 3, "max", 0.2, 1e-4, False, False)]
    _decisions(tmp_path / "decisions.csv", once)
    assert _confusion_lines(tmp_path, IsolationPolicy()) == []
    _decisions(tmp_path / "decisions.csv", twice)
    (line,) = _confusion_lines(tmp_path, IsolationPolicy())
    assert line.startswith("  class 3 held two populations in 2 epochs that E2ABL read as label confusion")
    assert _confusion_lines(tmp_path, None) == [] and _confusion_lines(None, IsolationPolicy()) == []


def test_report_reads_alpha_from_the_runs_hparams(tmp_path: Path) -> None:
    from e2abl_lightning.models.e2abl import IsolationPolicy
    from e2abl_lightning.report import _alpha

    assert _alpha(tmp_path) is None  # no hparams.yaml: no alpha line
    (tmp_path / "hparams.yaml").write_text("input_shape: !!python/tuple\n- 1\n- 427\npolicy: null\n")
    assert _alpha(tmp_path) == IsolationPolicy().alpha  # the CLI's default policy
    (tmp_path / "hparams.yaml").write_text("policy:\n  alpha: 0.01\n  min_share: 0.05\n")
    assert _alpha(tmp_path) == 0.01


def test_report_finds_the_only_run_below(gunpoint_run: Fit, tmp_path: Path, capsys) -> None:
    shutil.copytree(gunpoint_run.log_dir, tmp_path / "logs" / "run" / "version_0")
    main([str(tmp_path / "logs")])
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "logs" / "run" / "version_0" / "report.png"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "is not a directory"),
        (lambda p: p, "no metrics.csv in"),
    ],
)
def test_report_errors(tmp_path: Path, make, message: str, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main([str(make(tmp_path))])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("e2abl-report: error:") and message in lines[0]


def test_console_script(tmp_path: Path) -> None:
    assert SCRIPT.is_file(), "reinstall the package: pip install -e . --no-deps"
    done = subprocess.run([str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "is not a directory" in done.stderr
