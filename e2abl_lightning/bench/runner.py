"""The benchmark runner: a grid of dataset x attack x defense x seed -> CSV, Markdown table, plot.

Each cell goes through the same code path as ``e2abl fit`` and ``e2abl test`` (the same CLI parser,
configs and callbacks); only the fit is timed. Finished cells are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
METRICS = ("ca", "asr", "ra", "iso_precision", "iso_recall", "fit_seconds")


@dataclass
class Cell:
    """One run: a data config (dataset + attack), a defense, a seed."""

    data: Path
    defense: str
    model: Path
    seed: int
    max_epochs: int
    trainer: Path
    args: list[str] = field(default_factory=list)
    poison_rate: float | None = None

    @property
    def setting(self) -> str:
        if self.poison_rate is None:
            return self.data.stem
        return f"{self.data.stem}@{100 * self.poison_rate:g}%"

    @property
    def name(self) -> str:
        return f"{self.setting}__{self.defense}__seed{self.seed}"

    @property
    def signature(self) -> dict[str, Any]:
        """What a stored result must match to be reused for this cell: its configs (name and parsed
        content, so an edited config is rerun, not reused), epochs, arguments and poison rate."""
        files = {k: f"{p.name}@{_digest(p)}" for k, p in (("data", self.data), ("model", self.model))}
        files["trainer"] = f"{self.trainer.name}@{_digest(self.trainer)}"
        return {**files, "epochs": self.max_epochs, "args": self.args, "poison_rate": self.poison_rate}


def _digest(path: Path) -> str:
    """Short SHA-256 of a YAML file's parsed content (comments and layout do not count)."""
    content = json.dumps(yaml.safe_load(path.read_text()), sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:12]


def _resolve(path: str) -> Path:
    p = Path(path)
    for candidate in (p, CONFIG_ROOT / p):
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"config {path!r} not found (looked in . and {CONFIG_ROOT})")


def load_suite(suite: str, quick: bool = False, precision: str | None = None) -> list[Cell]:
    """Expand a suite YAML (a name under ``configs/suite/`` or a path) into cells.

    ``precision`` (one of :data:`PRECISIONS`) overrides every cell's trainer precision, after the
    suite's own arguments.
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not allowed; choose one of {PRECISIONS}")
    override = [] if precision is None else [f"--trainer.precision={precision}"]
    path = Path(suite)
    if not path.is_file():
        path = CONFIG_ROOT / "suite" / f"{suite}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_ROOT / "suite").glob("*.yaml"))
        raise FileNotFoundError(f"suite {suite!r} not found; known suites: {known} (or give a YAML path)")
    spec = yaml.safe_load(path.read_text())
    if "include" in spec:  # a suite made of suites, run one after the other
        cells = [cell for part in spec["include"] for cell in load_suite(part, quick, precision)]
        return cells[:2] if quick else cells
    for key in ("trainer", "datasets", "defenses"):
        if key not in spec:
            raise ValueError(f"suite {path} lacks the key {key!r}")
    datasets, seeds = spec["datasets"], spec.get("seeds", [0])
    defenses = dict(spec["defenses"])
    epochs = int(spec.get("max_epochs", 40))
    rates = spec.get("poison_rates", [None])  # a sweep: every dataset at every rate
    for rate in rates:
        if rate is not None and not 0.0 < float(rate) < 1.0:
            raise ValueError(f"suite {path}: poison_rates entry {rate} must be in (0, 1), e.g. 0.05")
    if quick:
        datasets, seeds, epochs, rates = datasets[:1], seeds[:1], int(spec.get("quick_epochs", 4)), rates[:1]
        defenses = {k: defenses[k] for k in list(defenses)[:1] + [k for k in defenses if k == "e2abl"][:1]}
    return [
        Cell(
            _resolve(d),
            name,
            _resolve(spec_d["model"]),
            int(seed),
            epochs,
            _resolve(spec["trainer"]),
            [*spec.get("args", []), *spec_d.get("args", []), *override],
            None if rate is None else float(rate),
        )
        for d in datasets
        for rate in rates
        for name, spec_d in defenses.items()
        for seed in seeds
    ]


def build_cell_cli(cell: Cell, save_dir: Path, max_epochs: int | None = None) -> Any:
    """The ``e2abl`` CLI of one cell, built but not run: its configs, seeds and logs under ``save_dir``,
    media callbacks off (cells are timed)."""
    from e2abl_lightning.cli import make_cli

    args = [
        *("--config", str(cell.trainer), "--config", str(cell.data), "--config", str(cell.model)),
        *cell.args,
        *([] if cell.poison_rate is None else [f"--data.init_args.poison_rate={cell.poison_rate}"]),
        f"--seed_everything={cell.seed}",
        f"--data.init_args.poison_seed={cell.seed}",
        f"--data.init_args.split_seed={cell.seed}",
        f"--trainer.max_epochs={max_epochs or cell.max_epochs}",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--trainer.logger.init_args.name=logs",
        "--gallery.enabled=false",
        "--isolation_monitor.enabled=false",
    ]
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI parses ``args`` only
    try:
        return make_cli(args, run=False)
    finally:
        sys.argv = argv


def run_cell(cell: Cell, out: Path) -> dict[str, Any]:
    """Fit and test one cell through the ``e2abl`` CLI machinery; returns its metrics."""
    from e2abl_lightning.callbacks import BackdoorEvalCallback
    from e2abl_lightning.cli_app import E2ABLWarning

    cell_dir = out / "cells" / cell.name
    cli = build_cell_cli(cell, cell_dir)
    policy = getattr(cli.model, "policy", None)
    if policy is not None and cell.max_epochs < policy.epochs_to_act:
        warnings.warn(
            f"{cell.name}: {cell.max_epochs} epochs are too few for E2ABL to act (it needs at least "
            f"policy.warmup_epochs + 2 = {policy.epochs_to_act}); this cell shows the model without the defense",
            E2ABLWarning,
            stacklevel=2,
        )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    fitted = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, BackdoorEvalCallback))
    res = evaluation.results
    return {
        "setting": cell.setting,
        "dataset": cell.data.stem,
        "poison_rate": cli.datamodule.poison_rate,
        "defense": cell.defense,
        "seed": cell.seed,
        "epochs": cell.max_epochs,
        "ca": res.get("test/clean_acc", math.nan),
        "asr": res.get("test/asr", math.nan),
        "ra": res.get("test/ra", math.nan),
        "iso_precision": fitted.get("isolation/precision", math.nan),
        "iso_recall": fitted.get("isolation/recall", math.nan),
        "fit_seconds": fit_seconds,
    }


def _fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def summarise(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean ± std over seeds, DER and time relative to the undefended cell."""
    from e2abl_lightning.metrics import defense_effectiveness_rating

    base = {(r["setting"], r["seed"]): r for r in rows if r["defense"] == "no_defense"}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["defense"]), []).append(r)
    lines = [
        "| setting | defense | seeds | CA % | ASR % | RA % | iso. precision | iso. recall | DER | fit s | time x |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (setting, defense), rs in groups.items():
        der, ratio = [], []
        for r in rs:
            b = base.get((setting, r["seed"]))
            if b is not None and defense != "no_defense":
                der.append(defense_effectiveness_rating(b["ca"], b["asr"], r["ca"], r["asr"]))
            if b is not None:
                ratio.append(r["fit_seconds"] / b["fit_seconds"])
        lines.append(
            f"| {setting} | {defense} | {len(rs)} | {_fmt([r['ca'] for r in rs])} | {_fmt([r['asr'] for r in rs])} "
            f"| {_fmt([r['ra'] for r in rs])} | {_fmt([r['iso_precision'] for r in rs], 1, 2)} "
            f"| {_fmt([r['iso_recall'] for r in rs], 1, 2)} | {_fmt(der, 1, 3)} "
            f"| {_fmt([r['fit_seconds'] for r in rs], 1, 1)} | {_fmt(ratio, 1, 2)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """CA vs ASR per defense (one marker per cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for defense in sorted({r["defense"] for r in rows}):
        rs = [r for r in rows if r["defense"] == defense]
        ax.scatter([100 * r["asr"] for r in rs], [100 * r["ca"] for r in rs], label=defense, alpha=0.8)
    ax.set_xlabel("attack success rate (%)")
    ax.set_ylabel("clean accuracy (%)")
    ax.set_title("CA vs ASR (top left is best)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rate_curve(rows: list[dict[str, Any]], path: Path) -> None:
    """ASR and CA against the poison rate, one line per dataset and defense (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.5 * len(datasets), 6.5), squeeze=False, sharex=True)
    for col, dataset in enumerate(datasets):
        for defense in sorted({r["defense"] for r in rows if r["dataset"] == dataset}):
            rs = [r for r in rows if r["dataset"] == dataset and r["defense"] == defense]
            rates = sorted({r["poison_rate"] for r in rs})
            for row, key in enumerate(("asr", "ca")):
                values = [[100 * r[key] for r in rs if r["poison_rate"] == p] for p in rates]
                means = [statistics.fmean(v) for v in values]
                stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
                x = [100 * p for p in rates]
                axes[row][col].errorbar(x, means, yerr=stds, marker="o", capsize=3, label=defense)
        axes[0][col].set_title(dataset)
        axes[0][col].set_ylabel("ASR (%)")
        axes[1][col].set_ylabel("clean accuracy (%)")
        axes[1][col].set_xlabel("poison rate (%)")
        ticks = sorted({100 * r["poison_rate"] for r in rows if r["dataset"] == dataset})
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_suite(cells: list[Cell], out: Path) -> list[dict[str, Any]]:
    """Run (or reuse) every cell, with a progress bar; writes results.csv/md and ca_vs_asr.png."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task("benchmark", total=len(cells))
        for cell in cells:
            done = out / "cells" / cell.name / "result.json"
            progress.update(task, description=cell.name)
            if done.is_file():
                row = json.loads(done.read_text())
                if row.pop("cell", cell.signature) != cell.signature:
                    raise ValueError(
                        f"{done} was run with other settings than this suite's cell {cell.name}: "
                        "give another --out directory (or delete that cell to rerun it)"
                    )
                rows.append(row)
            else:
                from e2abl_lightning.bench.results_page import record_machines

                row = run_cell(cell, out)
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps({**row, "cell": cell.signature}, indent=1))
                record_machines(out, [cell])  # what it ran on, now: a page written later elsewhere says the same
                rows.append(row)
                progress.console.print(
                    f"{cell.name}: CA {100 * row['ca']:.1f}  ASR {100 * row['asr']:.1f}  fit {row['fit_seconds']:.0f}s"
                )
            progress.advance(task)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = summarise(rows)
    (out / "results.md").write_text(table + "\n")
    plot(rows, out / "ca_vs_asr.png")
    if any(c.poison_rate is not None for c in cells):
        plot_rate_curve(rows, out / "poison_rate_curve.png")
    return rows


def _cell_key(cell: Cell, key: str) -> str:
    return cell.defense if key == "defense" else cell.data.stem


def main(argv: list[str] | None = None) -> None:
    """``e2abl-bench --suite NAME|PATH --out DIR [--quick] [--shard I/N] [--precision P] [--defenses D ...]
    [--datasets D ...]``."""
    parser = argparse.ArgumentParser(prog="e2abl-bench", description=__doc__)
    parser.add_argument("--suite", required=True, help="suite name under configs/suite/ or a YAML path")
    parser.add_argument("--out", required=True, type=Path, help="results directory (finished cells are reused)")
    parser.add_argument("--quick", action="store_true", help="two cells, a few epochs: a smoke run")
    parser.add_argument("--shard", default="0/1", help="I/N: run only every N-th cell from the I-th (parallel runs)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="override every cell's trainer precision; 32-true on CPUs without native bf16 (AVX2 only), where "
        "the suites' bf16-mixed autocast runs several times slower",
    )
    parser.add_argument(
        "--defenses", nargs="+", metavar="NAME", help="run only these defenses' cells (e.g. after a change to one)"
    )
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help="run only these data configs' cells (by stem)")
    parser.add_argument(
        "--report", type=Path, metavar="PAGE.md", help="also write a results page (table, plot, machine)"
    )
    args = parser.parse_args(argv)
    try:
        shard, shards = (int(v) for v in args.shard.split("/"))
        assert 0 <= shard < shards
    except (ValueError, AssertionError):
        parser.error(f"--shard={args.shard!r} must be I/N with 0 <= I < N, e.g. 0/2")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} is a file; give a folder for the results (created if missing)")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import lightning.pytorch  # noqa: F401  (configures its loggers on import; quiet them afterwards)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        cells = load_suite(args.suite, args.quick, args.precision)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    for flag, names, key in (("--defenses", args.defenses, "defense"), ("--datasets", args.datasets, "data")):
        if names:
            known = sorted({_cell_key(c, key) for c in cells})
            unknown = [n for n in names if n not in known]
            if unknown:
                parser.error(f"{flag} {unknown} not in suite {args.suite!r}; its {flag[2:]}: {known}")
            cells = [c for c in cells if _cell_key(c, key) in names]
    rows = run_suite(cells[shard::shards], args.out)
    if args.report:
        from e2abl_lightning.bench.results_page import write_page

        write_page(
            args.report, rows, cells[shard::shards], args.out, list(sys.argv[1:] if argv is None else argv), args.suite
        )
    print(summarise(rows))
    plots = [p.name for p in (args.out / "ca_vs_asr.png", args.out / "poison_rate_curve.png") if p.is_file()]
    print(f"\nwritten: {args.out / 'results.csv'}, {args.out / 'results.md'}, plots {plots}")


if __name__ == "__main__":
    main()
