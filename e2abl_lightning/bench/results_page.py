"""Results pages: ``e2abl-bench ... --report PAGE.md`` writes a suite's Markdown page from its stored cells.

A page holds the command that wrote it, what the cells ran with (package version, date, machine,
precision), the summary table of :func:`~e2abl_lightning.bench.runner.summarise` and the CA-vs-ASR
plot. The machine is recorded in ``<out>/machines.json`` when a cell runs (or, for cells stored without
one, by the first page written), so a page regenerated from stored cells (no training) on another
machine is the same page.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from e2abl_lightning import __version__
from e2abl_lightning.bench.runner import Cell, plot, plot_rate_curve, summarise

MACHINES = "machines.json"
LEGEND = (
    "CA, ASR and RA are test-set accuracies in % after the last epoch: clean accuracy; attack success "
    "rate (triggered test samples of the other classes classified as the target); robust accuracy "
    "(the same samples classified as their true class). Isolation precision and recall compare the "
    "samples a defense isolated at the end of training with the poisoned ones. DER (defense "
    "effectiveness rating) is (max(0, ΔASR) - max(0, ΔCA) + 1) / 2 against the undefended cell of the "
    "same seed. `fit s` is the training time of one cell, `time x` that time over the undefended "
    "cell's. Mean ± std over seeds."
)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :mod:`platform`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def this_machine() -> dict[str, Any]:
    """What this process runs cells with: package version, UTC date, CPU, cores, torch threads, GPU."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "version": __version__,
        "date": datetime.now(timezone.utc).date().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def cell_precision(cell: Cell) -> str:
    """The trainer precision a cell ran at: its last ``--trainer.precision=`` argument, else its trainer
    config's, else Lightning's default."""
    for arg in reversed(cell.args):
        if arg.startswith("--trainer.precision="):
            return arg.split("=", 1)[1]
    trainer = (yaml.safe_load(cell.trainer.read_text()) or {}).get("trainer") or {}
    return str(trainer.get("precision", "32-true"))


def record_machines(out: Path, cells: list[Cell], machine: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Add the cells not yet in ``<out>/machines.json`` under ``machine`` (default: this one); return the
    entries that hold this page's cells, each restricted to them."""
    path = out / MACHINES
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    known = {name for run in runs for name in run["cells"]}
    new = [c.name for c in cells if c.name not in known]
    if new:
        runs.append({**(machine if machine is not None else this_machine()), "cells": sorted(new)})
        path.write_text(json.dumps({"runs": runs}, indent=1, sort_keys=True) + "\n")
    names = {c.name for c in cells}
    return [{**run, "cells": [n for n in run["cells"] if n in names]} for run in runs if names & set(run["cells"])]


def _run_lines(runs: list[dict[str, Any]], cells: list[Cell]) -> list[str]:
    """One line per distinct machine and setting, with the number of cells run on it (a suite resumed
    on the same machine adds entries to ``machines.json`` that read the same)."""
    counts: dict[str, int] = {}
    for run in runs:
        precisions = sorted({cell_precision(c) for c in cells if c.name in run["cells"]})
        cores = f" ({run['cores']} cores)" if run.get("cores") else ""
        gpu = f", GPU {run['gpu']}" if run.get("gpu") else ""
        text = (
            f"cells run with e2abl-lightning {run['version']} on {run['date']}: "
            f"{run['cpu']}{cores}, {run['threads']} torch thread(s){gpu}, precision {', '.join(precisions)}"
        )
        counts[text] = counts.get(text, 0) + len(run["cells"])
    return [f"- {n} {text}" for text, n in counts.items()]


def write_page(
    page: Path,
    rows: list[dict[str, Any]],
    cells: list[Cell],
    out: Path,
    argv: list[str],
    suite: str,
    machine: dict[str, Any] | None = None,
) -> str:
    """Write ``page`` (and its plots beside it) for the suite's ``rows``; returns the page's text.

    Args:
        page: the Markdown file to write.
        rows: the cells' results (as :func:`~e2abl_lightning.bench.runner.run_suite` returns them).
        cells: the cells behind ``rows``.
        out: the suite's results directory (holds ``cells/`` and ``machines.json``).
        argv: the ``e2abl-bench`` arguments that wrote the page (quoted in it).
        suite: the suite's name or path.
        machine: what newly recorded cells ran on (default: :func:`this_machine`).
    """
    page.parent.mkdir(parents=True, exist_ok=True)
    runs = record_machines(out, cells, machine)
    figures = [f"![CA vs ASR]({page.stem}_ca_vs_asr.png)"]
    plot(rows, page.parent / f"{page.stem}_ca_vs_asr.png")
    if any(c.poison_rate is not None for c in cells):
        plot_rate_curve(rows, page.parent / f"{page.stem}_poison_rate_curve.png")
        figures.append(f"![poison-rate curve]({page.stem}_poison_rate_curve.png)")
    stored = Path(os.path.relpath(out, page.parent)) / "cells" / "*" / "result.json"
    text = "\n".join(
        [
            f"# Results: the `{Path(suite).stem}` suite",
            "",
            "<!-- Written by the command below from the stored cells; rerun it instead of editing. -->",
            "",
            "```bash",
            shlex.join(["e2abl-bench", *argv]),
            "```",
            "",
            *_run_lines(runs, cells),
            f"- stored cells: `{stored.as_posix()}` (the command reuses them and trains nothing)",
            "",
            LEGEND,
            "",
            summarise(rows),
            "",
            *figures,
            "",
        ]
    )
    page.write_text(text)
    return text
