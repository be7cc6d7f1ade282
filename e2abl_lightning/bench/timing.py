"""``python -m e2abl_lightning.bench.timing``: E2ABL's training time relative to undefended training.

Runs the undefended and the E2ABL cell of each setting alternately (same configs, seeds and epochs
as the suite), so both see the same machine load, and prints the fit-time ratio per repetition.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from e2abl_lightning.bench.runner import load_suite, run_cell


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m e2abl_lightning.bench.timing", description=__doc__)
    parser.add_argument("--suite", default="ucr", help="suite whose no_defense and e2abl cells are timed")
    parser.add_argument("--settings", nargs="+", default=["osuleaf_static", "japanesevowels_static"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    cells = {(c.setting, c.defense): c for c in load_suite(args.suite) if c.seed == 0}
    print("| setting | undefended fit s | E2ABL fit s | ratio |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            ratios, base, ours = [], [], []
            for _ in range(args.repeats):
                b = run_cell(cells[(setting, "no_defense")], Path(tmp))["fit_seconds"]
                e = run_cell(cells[(setting, "e2abl")], Path(tmp))["fit_seconds"]
                base.append(b)
                ours.append(e)
                ratios.append(e / b)
            print(
                f"| {setting} | {statistics.fmean(base):.1f} | {statistics.fmean(ours):.1f} "
                f"| {statistics.fmean(ratios):.2f} (runs: {', '.join(f'{r:.2f}' for r in ratios)}) |"
            )


if __name__ == "__main__":
    main()
