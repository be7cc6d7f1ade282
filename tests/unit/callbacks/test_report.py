"""``e2abl-report``: a PNG of a real run's CSV logs, one-line errors otherwise."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from e2abl_lightning.report import main, make_report, read_metrics
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
