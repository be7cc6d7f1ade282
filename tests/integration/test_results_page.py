"""Results pages: ``e2abl-bench --report`` writes the page from stored cells, and the published pages
regenerate from the cells committed beside them."""

import json
import shlex
import shutil
from pathlib import Path

import pytest

import e2abl_lightning.bench.results_page as results_page
import e2abl_lightning.bench.runner as runner

REPO = Path(__file__).resolve().parents[2]
MACHINE = {"version": "9.9.0", "date": "2026-01-02", "cpu": "Test CPU", "cores": 2, "threads": 1, "gpu": None}
MINI_SUITE = """\
trainer: trainer/bench.yaml
max_epochs: 2
seeds: [0, 1]
args: ["--trainer.precision=32-true"]
datasets: [data/osuleaf_static.yaml]
defenses:
  no_defense: {model: model/fcn_no_defense.yaml}
  e2abl: {model: model/fcn_e2abl.yaml}
"""
#: (defense, seed) -> (ca, asr, ra, iso_precision, iso_recall, fit_seconds)
CELLS = {
    ("no_defense", 0): (0.80, 0.98, 0.02, None, None, 10.0),
    ("no_defense", 1): (0.84, 0.96, 0.04, None, None, 10.0),
    ("e2abl", 0): (0.78, 0.0, 0.70, 0.6, 1.0, 12.0),
    ("e2abl", 1): (0.80, 0.02, 0.72, 0.7, 0.9, 13.0),
}
EXPECTED = """\
# Results: the `mini` suite

<!-- Written by the command below from the stored cells; rerun it instead of editing. -->

```bash
e2abl-bench --suite mini.yaml --out out --report pages/mini.md
```

- 4 cells run with e2abl-lightning 9.9.0 on 2026-01-02: Test CPU (2 cores), 1 torch thread(s), precision 32-true
- stored cells: `../out/cells/*/result.json` (the command reuses them and trains nothing)

{legend}

| setting | defense | seeds | CA % | ASR % | RA % | iso. precision | iso. recall | DER | fit s | time x |
|---|---|---|---|---|---|---|---|---|---|---|
| osuleaf_static | no_defense | 2 | 82.0 ± 2.8 | 97.0 ± 1.4 | 3.0 ± 1.4 | - | - | - | 10.0 ± 0.0 | 1.00 ± 0.00 |
| osuleaf_static | e2abl | 2 | 79.0 ± 1.4 | 1.0 ± 1.4 | 71.0 ± 1.4 | 0.65 ± 0.07 | 0.95 ± 0.07 | 0.965 ± 0.021 | 12.5 ± 0.7 | 1.25 ± 0.07 |

![CA vs ASR](mini_ca_vs_asr.png)
""".replace("{legend}", results_page.LEGEND)  # noqa: E501


def _store_cells(suite: Path, out: Path) -> None:
    """Write a ``result.json`` for every cell of ``suite`` under ``out``, as a finished run leaves it."""
    for cell in runner.load_suite(str(suite)):
        ca, asr, ra, precision, recall, seconds = CELLS[(cell.defense, cell.seed)]
        row = {"setting": cell.setting, "dataset": cell.data.stem, "poison_rate": 0.1, "defense": cell.defense}
        row |= {"seed": cell.seed, "epochs": cell.max_epochs, "ca": ca, "asr": asr, "ra": ra}
        row |= {"iso_precision": precision if precision is not None else float("nan")}
        row |= {"iso_recall": recall if recall is not None else float("nan"), "fit_seconds": seconds}
        done = out / "cells" / cell.name / "result.json"
        done.parent.mkdir(parents=True)
        done.write_text(json.dumps({**row, "cell": cell.signature}))


def _no_training(cell, out):
    raise AssertionError(f"{cell.name} was trained; a page is written from stored cells only")


def test_report_is_written_from_stored_cells(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("mini.yaml").write_text(MINI_SUITE)
    _store_cells(Path("mini.yaml"), Path("out"))
    monkeypatch.setattr(runner, "run_cell", _no_training)
    monkeypatch.setattr(results_page, "this_machine", lambda: MACHINE)
    argv = ["--suite", "mini.yaml", "--out", "out", "--report", "pages/mini.md"]
    runner.main(argv)
    assert Path("pages/mini.md").read_text() == EXPECTED
    assert Path("pages/mini_ca_vs_asr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path("out/machines.json").read_text())["runs"][0]["cpu"] == "Test CPU"
    # regenerated on another machine: the cells keep the machine they were recorded with
    monkeypatch.setattr(results_page, "this_machine", lambda: {**MACHINE, "cpu": "Other CPU", "date": "2027-01-01"})
    runner.main(argv)
    assert Path("pages/mini.md").read_text() == EXPECTED
    capsys.readouterr()


def test_a_cell_added_later_is_recorded_with_its_own_machine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mini.yaml").write_text(MINI_SUITE)
    cells = runner.load_suite("mini.yaml")
    runs = results_page.record_machines(tmp_path, cells[:2], MACHINE)
    assert [len(r["cells"]) for r in runs] == [2]
    runs = results_page.record_machines(tmp_path, cells, {**MACHINE, "cpu": "Other CPU"})
    assert [(r["cpu"], len(r["cells"])) for r in runs] == [("Test CPU", 2), ("Other CPU", 2)]
    lines = results_page._run_lines(runs, cells)
    assert len(lines) == 2 and "- 2 cells run with e2abl-lightning 9.9.0 on 2026-01-02: Other CPU" in lines[1]


def test_entries_of_the_same_machine_make_one_line(tmp_path, monkeypatch):
    """A suite resumed on the same machine adds a second machines.json entry; the page counts them together."""
    monkeypatch.chdir(tmp_path)
    Path("mini.yaml").write_text(MINI_SUITE)
    cells = runner.load_suite("mini.yaml")
    results_page.record_machines(tmp_path, cells[:1], MACHINE)
    runs = results_page.record_machines(tmp_path, cells, MACHINE)
    assert len(runs) == 2
    lines = results_page._run_lines(runs, cells)
    machine = "Test CPU (2 cores), 1 torch thread(s), precision 32-true"
    assert lines == [f"- {len(cells)} cells run with e2abl-lightning 9.9.0 on 2026-01-02: {machine}"]


def test_cell_precision_prefers_the_last_override():
    cell = runner.load_suite("demo", precision="32-true")[0]
    assert results_page.cell_precision(cell) == "32-true"
    cell.args = []
    assert results_page.cell_precision(cell) == "32-true"  # bench.yaml sets none: Lightning's default
    cell.args = ["--trainer.precision=bf16-mixed", "--trainer.precision=16-mixed"]
    assert results_page.cell_precision(cell) == "16-mixed"


PAGES = sorted((REPO / "docs" / "results").glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_published_page_regenerates_from_its_stored_cells(page, tmp_path, monkeypatch, capsys):
    """Run the command a page names, in a copy of docs/results/, and get the same page (no training)."""
    text = page.read_text()
    command = text.split("```bash\n", 1)[1].split("\n```", 1)[0]
    argv = shlex.split(command)
    assert argv[0] == "e2abl-bench"
    copy = tmp_path / "docs" / "results"
    shutil.copytree(REPO / "docs" / "results", copy)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "run_cell", _no_training)
    runner.main(argv[1:])
    assert (copy / page.name).read_text() == text
    capsys.readouterr()


def test_a_cell_records_its_machine_when_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine a cell ran on is written when it runs, not when a page is first written (maybe elsewhere)."""
    cell = runner.load_suite("demo", quick=True)[0]
    row = {"setting": cell.setting, "defense": cell.defense, "seed": 0, "ca": 0.9, "asr": 0.1, "ra": 0.5}
    row |= {"iso_precision": 1.0, "iso_recall": 1.0, "fit_seconds": 1.0}
    monkeypatch.setattr(runner, "run_cell", lambda c, out: dict(row))
    monkeypatch.setattr(results_page, "this_machine", lambda: dict(MACHINE))
    runner.run_suite([cell], tmp_path)
    runs = json.loads((tmp_path / "machines.json").read_text())["runs"]
    assert runs == [{**MACHINE, "cells": [cell.name]}]
