"""``e2abl-report RUN_DIR``: one PNG of a run's CSV logs (CA, ASR, isolation precision/recall per epoch, and
E2ABL's class tests from ``decisions.csv``)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure

EVAL_KEYS = {"val/clean_acc": "clean accuracy (CA)", "val/asr": "attack success rate (ASR)"}
ISOLATION_KEYS = {
    "isolation/precision": "isolation precision",
    "isolation/recall": "isolation recall",
    "isolation/recovery_acc": "label recovery accuracy",
}


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message is meant for the user."""


def find_metrics(run_dir: Path) -> Path:
    """``run_dir/metrics.csv``, or the only ``metrics.csv`` below ``run_dir``."""
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a directory; pass a run directory such as logs/<name>/version_0")
    direct = run_dir / "metrics.csv"
    if direct.is_file():
        return direct
    found = sorted(run_dir.rglob("metrics.csv"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ReportError(f"no metrics.csv in {run_dir}: was the run logged with the CSVLogger (the default)?")
    names = ", ".join(str(p.parent) for p in found[:3])
    raise ReportError(f"{len(found)} runs under {run_dir}; pass one of them, e.g. {names}")


def read_metrics(path: Path) -> dict[str, dict[int, float]]:
    """``{key: {epoch: value}}`` from a CSVLogger ``metrics.csv`` (the last value of each epoch)."""
    series: dict[str, dict[int, float]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = row.get("epoch")
            if epoch in (None, ""):
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                try:
                    number = float(value)
                except ValueError:
                    continue
                if math.isfinite(number):
                    series.setdefault(key, {})[int(float(epoch))] = number
    return series


def read_decisions(path: Path) -> tuple[dict[int, dict[int, float]], dict[int, set[int]], dict[int, int]]:
    """From E2ABL's ``decisions.csv``: each class's smallest adjusted p-value per epoch ``{class: {epoch: p}}``,
    the epochs in which it passed in some view ``{class: {epoch}}``, and the named target ``{epoch: class}``."""
    smallest: dict[int, dict[int, float]] = {}
    passed: dict[int, set[int]] = {}
    named: dict[int, int] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            epoch, c, p = int(row["epoch"]), int(row["class"]), float(row["adjusted_p"])
            smallest.setdefault(c, {})[epoch] = min(p, smallest.get(c, {}).get(epoch, 1.0))
            passed.setdefault(c, set())
            if row["passing"] == "True":
                passed[c].add(epoch)
            if row["named"] == "True":
                named[epoch] = c
    return smallest, passed, named


def confusion_epochs(path: Path, alpha: float, min_dip: float) -> dict[int, int]:
    """From E2ABL's ``decisions.csv``: for each class never named, the number of epochs in which some view
    saw two populations in it at the policy's level (adjusted p below ``alpha``, dip at least ``min_dip``)
    that the policy read as confusion (the split's worse-fitted side mostly given to other classes, so
    not ``trapped``). Only classes with at least one such epoch appear."""
    epochs: dict[int, set[int]] = {}
    named: set[int] = set()
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            c = int(row["class"])
            if row["named"] == "True":
                named.add(c)
            significant = float(row["adjusted_p"]) < alpha and float(row["dip"]) >= min_dip
            if significant and row["trapped"] == "False":
                epochs.setdefault(c, set()).add(int(row["epoch"]))
    return {c: len(e) for c, e in sorted(epochs.items()) if c not in named}


def _alpha(run_dir: Path) -> float | None:
    """The policy's ``alpha`` from the run's ``hparams.yaml``, if it is there."""
    hparams = run_dir / "hparams.yaml"
    if not hparams.is_file():
        return None
    # Lightning tags tuples as Python objects; untagged they load safely as lists
    values = yaml.safe_load(re.sub(r"!!python/\S+", "", hparams.read_text())) or {}
    if "policy" in values and values["policy"] is None:  # E2ABL's default policy
        from e2abl_lightning.models.e2abl.policy import IsolationPolicy

        return IsolationPolicy().alpha
    policy = values.get("policy")
    return float(policy["alpha"]) if isinstance(policy, dict) and "alpha" in policy else None


def _plot_decisions(ax: Axes, run_dir: Path) -> None:
    """Each class's smallest adjusted p-value per epoch (grey), the named target in red, passing epochs dotted."""
    smallest, passed, named = read_decisions(run_dir / "decisions.csv")
    targets = set(named.values())
    for c, values in sorted(smallest.items()):
        epochs = sorted(values)
        style = (
            {"color": "tab:red", "lw": 2, "label": f"class {c} (named)"} if c in targets else {"color": "0.6", "lw": 1}
        )
        ax.plot(epochs, [max(values[e], 1e-12) for e in epochs], **style)
        if passed[c]:
            ax.scatter(
                sorted(passed[c]), [max(values[e], 1e-12) for e in sorted(passed[c])], s=14, color=style["color"]
            )
    alpha = _alpha(run_dir)
    if alpha is not None:
        ax.axhline(alpha, ls="--", color="black", lw=1, label=f"alpha {alpha:g}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title("E2ABL class tests: smallest adjusted p per class (dots: passing)", fontsize=10)
    ax.grid(alpha=0.3)
    if targets or alpha is not None:
        ax.legend(fontsize=8, loc="best")


def _title(run_dir: Path) -> str:
    manifest = run_dir / "poison_manifest.json"
    parts = []
    config = run_dir / "config.yaml"
    if config.is_file():
        model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
        if isinstance(model, dict) and model.get("class_path"):
            parts.append(str(model["class_path"]).rsplit(".", 1)[-1])
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ReportError(f"{manifest} is not valid JSON ({err}); restore or delete it") from None
        if not isinstance(info, dict):
            raise ReportError(f"{manifest} holds a {type(info).__name__}, not a poison manifest; restore or delete it")
        trigger = (info.get("trigger") or {}).get("name", "")
        parts.append(f"{info.get('dataset', '')} {trigger}, {info.get('poison_rate', 0):.0%} poisoned")
        parts.append(f"target {info.get('target_label')}")
    return " | ".join(p for p in parts if p) or str(run_dir)


def make_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report PNG of ``run_dir`` (default ``<run>/report.png``) and return its path."""
    metrics_path = find_metrics(Path(run_dir))
    series = read_metrics(metrics_path)
    decided = series.get("train/num_flagged")  # E2ABL logs isolation/* before its first decision too
    if decided:
        for key in ISOLATION_KEYS:
            if key in series:
                series[key] = {e: v for e, v in series[key].items() if e in decided}
    eval_keys = [k for k in EVAL_KEYS if k in series]
    iso_keys = [k for k in ISOLATION_KEYS if series.get(k)]
    if not eval_keys and not iso_keys:
        raise ReportError(f"{metrics_path} holds no val/clean_acc, val/asr or isolation/* values yet")
    out = Path(output) if output is not None else metrics_path.parent / "report.png"
    run_title = _title(metrics_path.parent)  # may raise ReportError: before any figure or file exists
    tests = (metrics_path.parent / "decisions.csv").is_file()
    fig = Figure(figsize=(16.5 if tests else 11, 4))

    axes = fig.subplots(1, 3 if tests else 2)
    if tests:
        _plot_decisions(axes[2], metrics_path.parent)
    for ax, keys, names, title in (
        (axes[0], eval_keys, EVAL_KEYS, "Validation: clean accuracy and ASR"),
        (axes[1], iso_keys, ISOLATION_KEYS, "Isolation (oracle keys; metrics only)"),
    ):
        for key in keys:
            epochs = sorted(series[key])
            ax.plot(epochs, [series[key][e] for e in epochs], marker="o", ms=2.5, label=names[key])
        for key, style in (("test/clean_acc", "--"), ("test/asr", ":")):
            if keys is eval_keys and key in series:
                value = list(series[key].values())[-1]
                ax.axhline(value, ls=style, color="gray", lw=1, label=f"{key} {value:.3f}")
        if not keys:
            ax.text(0.5, 0.5, "no isolation metrics in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(run_title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``e2abl-report`` console script."""
    parser = argparse.ArgumentParser(prog="e2abl-report", description=__doc__)
    parser.add_argument("run_dir", help="a run directory holding metrics.csv (e.g. logs/<name>/version_0)")
    parser.add_argument("-o", "--output", help="PNG to write (default: <run_dir>/report.png)")
    args = parser.parse_args(argv)
    try:
        path = make_report(args.run_dir, args.output)
    except ReportError as err:
        print(f"e2abl-report: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(path)


if __name__ == "__main__":
    main()
