"""The ``e2abl`` command: a LightningCLI over any defense and any backdoor datamodule.

An error a user can cause (a bad value, file, checkpoint or missing data) ends in one line,
``e2abl: error: <what, the value, the fix>``, and exit code 2; ``--debug`` or ``E2ABL_DEBUG=1``
shows the traceback instead. This module imports nothing heavy: Lightning loads only once a command
runs, so ``e2abl --help`` answers at once. The LightningCLI itself is in :mod:`e2abl_lightning.cli_app`.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2abl_lightning.cli_app import E2ABLCLI

SUBCOMMANDS = ("fit", "validate", "test", "predict")

HELP = """\
usage: e2abl [-h] [--debug] {fit,validate,test,predict} ...

Train a clean classifier on poisoned data: E2ABL (end-to-end anti-backdoor learning) and baselines
on images and time series, in PyTorch Lightning. Each command takes YAML configs (--config, later
ones win) and any option as --section.key=value.

examples:
  e2abl fit --config configs/experiment/osuleaf_static_e2abl.yaml
  e2abl test --config configs/experiment/osuleaf_static_e2abl.yaml \\
      --ckpt_path logs/osuleaf_static_e2abl/version_0/checkpoints/last.ckpt

subcommands (`e2abl <subcommand> --help` lists every option):
  fit                 train: writes logs/<name>/version_N/ (metrics.csv, checkpoints, suspects.csv, decisions.csv)
  validate            score a checkpoint on the validation split
  test                score a checkpoint on the test split (clean accuracy, ASR, robust accuracy)
  predict             class probabilities of the clean test split

options:
  -h, --help          show this help message and exit
  --debug             show the full traceback of an error (also E2ABL_DEBUG=1)
"""


def make_cli(args: Any = None, run: bool = True, exit_on_error: bool = True) -> E2ABLCLI:
    """Build (and by default run) the CLI; ``args`` as a list or dict runs it from Python.

    With ``exit_on_error=False`` a malformed command raises ``argparse.ArgumentError`` instead of
    printing jsonargparse's usage and exiting (``main`` turns it into one line).
    """
    from e2abl_lightning.cli_app import build_cli

    return build_cli(args, run=run, exit_on_error=exit_on_error)


def __getattr__(name: str) -> Any:  # E2ABLCLI without importing Lightning at ``import e2abl_lightning.cli``
    if name == "E2ABLCLI":
        from e2abl_lightning.cli_app import E2ABLCLI

        return E2ABLCLI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_checkpoint(path: Any) -> None:
    """Raise one clear error for a ``ckpt_path`` that is missing, a folder, or not a checkpoint.

    Without it, a corrupted file fails deep inside ``torch.load`` with advice to load it with
    ``weights_only=False``, which would run any pickled code in it. ``"last"``/``"best"``/``"hpc"``
    and URLs are left to Lightning.
    """
    if path is None or str(path) in ("last", "best", "hpc", "registry") or "://" in str(path):
        return
    file = Path(str(path)).expanduser()
    if file.is_dir():
        near = [file / "last.ckpt", file / "checkpoints" / "last.ckpt", *sorted(file.glob("*/checkpoints/last.ckpt"))]
        found = [p for p in near if p.is_file()] or sorted(file.glob("*.ckpt"))
        hint = f", e.g. {found[0]}" if found else ""
        raise IsADirectoryError(
            f"ckpt_path={str(path)!r} is a directory, not a checkpoint file; pass a .ckpt file in it{hint}"
        )
    if not file.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r} does not exist; pass the last.ckpt of an earlier run")
    if not zipfile.is_zipfile(file):
        raise ValueError(
            f"ckpt_path={str(path)!r} is not a PyTorch checkpoint (not a zip archive): the file is corrupted or "
            "truncated; pass another checkpoint (e.g. the run's last.ckpt) or start without ckpt_path"
        )


# ---- one line for the user ----------------------------------------------------------------------
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "Expected a <class 'NoneType'>",
    "tip:",
)


def condense(message: str, subcommand: str | None = None) -> str:
    """jsonargparse's nested, multi-line parse error as one sentence: the key, the real problem."""
    keys: list[str] = []
    facts: list[str] = []
    owner = ""
    given = re.findall(r"^\s*Given value: (.*)$", message, flags=re.MULTILINE)
    for line in message.splitlines():
        text = line.strip().removeprefix("- ").strip()
        if not text or text.startswith(_NOISE):
            continue
        match = re.fullmatch(r'Parser key "([^"]+)":?\s*(.*)', text)
        if match:
            keys.append(match[1])
            text = match[2].strip()
            if not text:
                continue
        match = re.fullmatch(r"Problem with given class_path '([^']+)':?\s*(.*)", text)
        if match:
            owner = match[1].rsplit(".", 1)[-1]
            text = match[2].strip()
            if not text:
                continue
        facts.append(text)
    facts = [re.sub(r"<class '([\w.]+)'>", lambda m: m[1].rsplit(".", 1)[-1], f) for f in dict.fromkeys(facts)]
    sentence = "; ".join(facts) or message.strip().splitlines()[0]
    value = given[-1].strip() if given else ""
    if value and len(value) < 80 and "(" not in value and value not in sentence:
        sentence = f"{sentence}; got {value!r}"
    if subcommand and sentence.startswith("unrecognized arguments:"):
        sentence = sentence.replace(f"unrecognized arguments: {subcommand} ", "unrecognized arguments: ", 1)
    keys = [k for k in keys if k]
    key = ".".join([keys[0], "init_args", *keys[1:]] if owner and len(keys) > 1 else keys)
    where = f"{key} ({owner})" if key and owner else key or owner
    prefix = f"{where}: " if where else ""
    command = f"e2abl {subcommand} --help" if subcommand else "e2abl --help"
    return f"{prefix}{sentence} (see `{command}` for the accepted options)"


def root_cause(err: BaseException) -> BaseException:
    """The exception a constructor or loader raised, out of jsonargparse's wrappers around it."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = traceback.extract_tb(current.__traceback__)
        if frames and "jsonargparse" not in Path(frames[-1].filename).parts:
            return current
        current = current.__cause__ or current.__context__
    return err


USER_ERRORS = (ValueError, TypeError, OSError, ImportError)


def user_message(err: BaseException, subcommand: str | None = None) -> str | None:
    """One line for an error the user can fix, or None for a bug (which keeps its traceback)."""
    import argparse

    if isinstance(err, argparse.ArgumentError):
        return condense(str(err), subcommand)
    cause = root_cause(err)
    if cause is err and "Does not validate against any of the Union subtypes" in str(err):
        return condense(str(err), subcommand)
    if type(cause).__name__ == "MisconfigurationException":
        return " ".join(str(cause).split())
    if not isinstance(cause, USER_ERRORS):
        return None
    text = " ".join(str(cause).split())
    if isinstance(cause, FileNotFoundError) and cause.filename and str(cause.filename) not in text:
        text = f"{text}: {cause.filename}"
    return text or type(cause).__name__


def _subcommand(argv: list[str]) -> str | None:
    return next((a for a in argv if a in SUBCOMMANDS), None)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``e2abl`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("E2ABL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if argv in (["-h"], ["--help"]):
        print(HELP, end="")
        return
    if not argv:
        print("usage: e2abl [-h] [--debug] {fit,validate,test,predict} ...", file=sys.stderr)
        print("e2abl: error: choose a subcommand: fit, validate, test or predict (`e2abl --help`)", file=sys.stderr)
        raise SystemExit(2)
    saved, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI reads ``argv`` only
    try:
        make_cli(argv, exit_on_error=False)
        end_process_group()
    except Exception as err:
        message = None if debug else user_message(err, _subcommand(argv))
        if message is None:
            raise
        print(f"e2abl: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv = saved


def end_process_group() -> None:
    """Leave a DDP process group cleanly once the work is done.

    Lightning leaves the group open; gloo's threads can then abort the interpreter at exit
    ("terminate called without an active exception", exit code -6) after a successful run.
    """
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
