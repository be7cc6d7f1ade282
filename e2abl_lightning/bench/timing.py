"""``python -m e2abl_lightning.bench.timing``: E2ABL's training cost relative to undefended training.

The benchmark of record for speed. For each setting (OSULeaf and JapaneseVowels with the FCN, a
20,000-image Fashion-MNIST subset with the small CNN; every fit at 32-true so the numbers mean the same
on any CPU) it fits the undefended and the E2ABL cell of the suite in pairs, swapping their order
every repetition so both see the same machine load. Every fit runs in a fresh subprocess, so its peak
RSS is its own. Prints per setting the fit-time ratio (mean, and the spread over repetitions), the ratio
of the fits' CPU time (less sensitive than wall time to other load on a shared machine) and the peak
RSS of both.

``--profile`` instead fits each setting once per defense under Lightning's ``SimpleProfiler`` and prints
where E2ABL's extra time goes: every trainer action (step, backward, optimiser step, the epoch-end
decision in ``on_train_batch_end``, validation, ...) with its total in both fits, largest extra first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

#: setting -> (suite, data config stem): the suites' undefended and E2ABL cells, seed 0
SETTINGS = {
    "osuleaf": ("ucr", "osuleaf_static"),
    "japanesevowels": ("ucr", "japanesevowels_static"),
    "fashionmnist": ("fashionmnist_cpu", "fashionmnist_badnets"),
}
DEFENSES = ("no_defense", "e2abl")
PRECISION = "32-true"
_MARK = "TIMING-RESULT "
#: SimpleProfiler action suffixes: the optimiser step, and the closure it runs
_CLOSURE = (".optimizer_step", ".training_step", ".backward")

#: ``(setting, defense, epochs) -> {"fit_seconds": s, "peak_rss_mib": m, "epochs": e}``
Measure = Callable[[str, str, int | None], dict[str, float]]


def fit_once(setting: str, defense: str, epochs: int | None, out: Path, profile: bool = False) -> dict[str, Any]:
    """Fit one cell in this process (no test); returns its fit seconds and this process's peak RSS, and
    with ``profile`` the total seconds of every trainer action (``"actions"``)."""
    import logging
    import warnings

    from e2abl_lightning.bench.runner import build_cell_cli, load_suite

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    suite, data = SETTINGS[setting]
    cell = next(
        c
        for c in load_suite(suite, precision=PRECISION)
        if c.data.stem == data and c.defense == defense and c.seed == 0
    )
    cli = build_cell_cli(cell, out, epochs)
    if profile:
        from lightning.pytorch.profilers import SimpleProfiler

        cli.trainer.profiler = SimpleProfiler()
    start, cpu = time.perf_counter(), time.process_time()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    import torch

    result = {
        "fit_seconds": seconds,
        "fit_cpu_seconds": cpu,
        "peak_rss_mib": peak,
        "epochs": epochs or cell.max_epochs,
        "threads": torch.get_num_threads(),
    }
    if profile:  # the model's class name out of the action names, so both fits' actions line up
        model = type(cli.model).__name__
        result["actions"] = {
            name.replace(model, "model"): sum(durations)
            for name, durations in cli.trainer.profiler.recorded_durations.items()
        }
    return result


def measure_in_subprocess(
    setting: str, defense: str, epochs: int | None, threads: int = 1, profile: bool = False
) -> dict[str, Any]:
    """:func:`fit_once` in a fresh interpreter with ``threads`` threads, so that the peak RSS is this fit's alone."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "e2abl_lightning.bench.timing", "--one-fit", setting, defense, str(epochs or 0)]
        proc = subprocess.run(
            [*cmd, "--out", tmp, *(["--profile"] if profile else [])],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads)},
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {defense} fit of {setting} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(lines[-1][len(_MARK) :])


def _spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def run(settings: list[str], repeats: int, epochs: int | None, measure: Measure, echo: Callable[[str], None]) -> str:
    """Time every setting ``repeats`` times (undefended and E2ABL in pairs, order swapped every
    repetition); returns the Markdown table."""
    lines = [
        "| setting | epochs | undefended fit s | E2ABL fit s | time ratio (runs) | CPU-time ratio (runs) "
        "| undefended peak RSS MiB | E2ABL peak RSS MiB | RSS ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in settings:
        runs: dict[str, list[dict[str, float]]] = {d: [] for d in DEFENSES}
        for r in range(repeats):
            for defense in DEFENSES if r % 2 == 0 else DEFENSES[::-1]:
                result = measure(setting, defense, epochs)
                runs[defense].append(result)
                echo(
                    f"{setting} {defense} run {r + 1}: {result['fit_seconds']:.1f} s, {result['peak_rss_mib']:.0f} MiB"
                )
        base, ours = runs["no_defense"], runs["e2abl"]
        ratios = [e["fit_seconds"] / b["fit_seconds"] for b, e in zip(base, ours, strict=True)]
        cpu = [e["fit_cpu_seconds"] / b["fit_cpu_seconds"] for b, e in zip(base, ours, strict=True)]
        rss = [e["peak_rss_mib"] / b["peak_rss_mib"] for b, e in zip(base, ours, strict=True)]
        lines.append(
            f"| {setting} | {int(base[0]['epochs'])} | {_spread([b['fit_seconds'] for b in base], 1)} "
            f"| {_spread([e['fit_seconds'] for e in ours], 1)} "
            f"| {statistics.fmean(ratios):.2f} ({', '.join(f'{v:.2f}' for v in ratios)}) "
            f"| {statistics.fmean(cpu):.2f} ({', '.join(f'{v:.2f}' for v in cpu)}) "
            f"| {_spread([b['peak_rss_mib'] for b in base], 0)} | {_spread([e['peak_rss_mib'] for e in ours], 0)} "
            f"| {statistics.fmean(rss):.2f} |"
        )
    return "\n".join(lines)


def _with_update(actions: dict[str, float]) -> dict[str, float]:
    """``actions`` plus the optimiser's own update: its step action holds the closure (step, backward)."""
    total = {suffix: sum(v for k, v in actions.items() if k.endswith(suffix)) for suffix in _CLOSURE}
    update = total[".optimizer_step"] - total[".training_step"] - total[".backward"]
    return {**actions, "optimiser update (optimizer_step less its step and backward)": update}


def profile_table(setting: str, base: dict[str, Any], ours: dict[str, Any], top: int) -> str:
    """Markdown: the ``top`` trainer actions by E2ABL's extra total time over the undefended fit's
    (actions nest: a batch holds its step, backward and optimiser step)."""
    a, b = _with_update(base["actions"]), _with_update(ours["actions"])
    extra = sorted(set(a) | set(b), key=lambda name: b.get(name, 0.0) - a.get(name, 0.0), reverse=True)
    lines = [
        f"{setting}: fit {base['fit_seconds']:.1f} s undefended, {ours['fit_seconds']:.1f} s E2ABL "
        f"(+{ours['fit_seconds'] - base['fit_seconds']:.1f} s)",
        "",
        "| action | undefended s | E2ABL s | extra s |",
        "|---|---|---|---|",
    ]
    for name in extra[:top]:
        x, y = a.get(name, 0.0), b.get(name, 0.0)
        lines.append(f"| {name} | {x:.2f} | {y:.2f} | {y - x:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m e2abl_lightning.bench.timing", description=__doc__)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3, help="pairs of fits per setting")
    parser.add_argument("--epochs", type=int, help="epochs per fit (default: the suite's, 40 series / 6 images)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads per fit (default 1: with more, OpenMP's spinning threads turn any other load on the machine "
        "into a several-fold slowdown of whichever fit it meets)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing: one profiled fit per defense and setting, and where E2ABL's extra time goes",
    )
    parser.add_argument("--top", type=int, default=12, help="actions listed per setting with --profile")
    parser.add_argument("--one-fit", nargs=3, metavar=("SETTING", "DEFENSE", "EPOCHS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_fit:  # the subprocess of one measured fit
        setting, defense, epochs = args.one_fit
        result = fit_once(setting, defense, int(epochs) or None, args.out, args.profile)
        print(_MARK + json.dumps(result), flush=True)
        return
    if min(args.repeats, args.threads, args.top, args.epochs or 1) < 1:
        parser.error(
            f"--repeats={args.repeats}, --threads={args.threads}, --top={args.top} and --epochs={args.epochs} "
            "must be at least 1"
        )
    print(
        f"precision {PRECISION}, {args.threads} thread(s) per fit, {os.cpu_count()} CPUs; each fit in its own process"
    )
    if args.profile:
        for setting in args.settings:
            fits = [measure_in_subprocess(setting, d, args.epochs, args.threads, profile=True) for d in DEFENSES]
            print(profile_table(setting, *fits, args.top) + "\n", flush=True)
        return
    measure = partial(measure_in_subprocess, threads=args.threads)
    table = run(args.settings, args.repeats, args.epochs, measure, lambda s: print(s, flush=True))
    print(table)


if __name__ == "__main__":
    main()
