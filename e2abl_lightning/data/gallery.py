"""``e2abl-gallery``: one PNG with a clean sample and its poisoned version for every image attack.

Example::

    e2abl-gallery --dataset fashionmnist --out docs/gallery_fashionmnist.png

Each row is an attack: the clean image, the triggered image and the amplified difference. Dirty-label
attacks show a non-target test image; clean-label attacks (SIG, label-consistent) a target-class
training image, the kind they poison. The trained attacks (label-consistent, input-aware) train in
setup: a few minutes on a CPU the first time, then they load from ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from e2abl_lightning.data.datasets.images import (
    ImageSplits,
    load_mnist_subset,
    load_torchvision,
)
from e2abl_lightning.data.triggers import (
    BPP,
    SIG,
    BadNets,
    Blend,
    FTrojan,
    InputAware,
    LabelConsistent,
    Trigger,
    Trojan,
    WaNet,
)

#: Attacks whose setup trains a network (minutes on a CPU the first time, then loaded from the cache).
TRAINED = {
    "LabelConsistent": "training the label-consistent attack's surrogate classifier and its adversarial "
    "perturbations (minutes on a CPU the first time, cached after)",
    "InputAware": "training the input-aware attack's pattern and mask generators (minutes on a CPU the first "
    "time, cached after)",
}

#: Gallery name -> loader ``(root, download) -> ImageSplits``.
DATASETS: dict[str, Callable[[str, bool], ImageSplits]] = {
    "fashionmnist": lambda root, download: load_torchvision("FashionMNIST", root, download),
    "mnist": lambda root, download: load_torchvision("MNIST", root, download),
    "mnist-subset": lambda root, download: load_mnist_subset(),
    "cifar10": lambda root, download: load_torchvision("CIFAR10", root, download),
    "cifar100": lambda root, download: load_torchvision("CIFAR100", root, download),
    "gtsrb": lambda root, download: load_torchvision("GTSRB", root, download),
}


def default_attacks() -> dict[str, Trigger]:
    """Every image attack with its default (the anchors') parameters."""
    return {
        "BadNets": BadNets(),
        "BadNets (grid)": BadNets(pattern="grid"),
        "Blend": Blend(),
        "SIG": SIG(),
        "Trojan": Trojan(),
        "WaNet": WaNet(),
        "BPP": BPP(),
        "FTrojan": FTrojan(),
        "Label-consistent": LabelConsistent(),
        "Input-aware": InputAware(),
    }


def poisoned_examples(
    data: ImageSplits,
    attacks: dict[str, Trigger],
    target_label: int = 0,
    index: int = 0,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[tuple[str, Tensor, Tensor]]:
    """``(name, clean [C, H, W], poisoned [C, H, W])`` for every attack.

    Args:
        data: the dataset's raw splits.
        attacks: name -> trigger (set up here on the training split).
        target_label: the attack target.
        index: which eligible image to show (the ``index``-th non-target test image, or target-class
            training image for clean-label attacks).
        seed: the poison seed.
        cache_dir: cache for trained triggers.
        progress: called with one line per attack as it is set up (the trained ones take minutes).
    """
    non_target = torch.nonzero(data.y_test != target_label).flatten()
    target_train = torch.nonzero(data.y_train == target_label).flatten()
    rows = []
    for number, (name, trigger) in enumerate(attacks.items(), start=1):
        start = time.perf_counter()
        if progress is not None and trigger.__class__.__name__ in TRAINED:
            progress(f"[{number}/{len(attacks)}] {name}: {TRAINED[trigger.__class__.__name__]}")
        trigger.setup(data.x_train, data.y_train, target_label, torch.Generator().manual_seed(seed), cache_dir)
        if progress is not None:
            progress(f"[{number}/{len(attacks)}] {name} ready ({time.perf_counter() - start:.1f} s)")
        pool, idx = (data.x_train, target_train) if trigger.clean_label else (data.x_test, non_target)
        clean = pool[idx[index % idx.numel()]][None]  # [1, C, H, W]
        poisoned = trigger.apply(clean, torch.Generator().manual_seed(seed + 1))
        rows.append((name, clean[0], poisoned[0]))
    return rows


def _show(image: Tensor) -> tuple[Tensor, str | None]:
    """An ``[C, H, W]`` tensor as what ``imshow`` takes, with a colour map for greyscale."""
    if image.shape[0] == 1:
        return image[0], "gray"
    return image.permute(1, 2, 0), None


def write_gallery(rows: Sequence[tuple[str, Tensor, Tensor]], out: Path, title: str) -> Path:
    """Write the rows as one PNG (matplotlib, Agg backend): clean | poisoned | |difference| x10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(5.4, 1.8 * len(rows)), squeeze=False)
    for r, (name, clean, poisoned) in enumerate(rows):
        diff = ((poisoned - clean).abs() * 10).clamp(0, 1)
        for c, (img, label) in enumerate(((clean, "clean"), (poisoned, "poisoned"), (diff, "|diff| x10"))):
            ax = axes[r, c]
            data, cmap = _show(img)
            ax.imshow(data.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / len(rows)))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``e2abl-gallery`` console script."""
    parser = argparse.ArgumentParser(prog="e2abl-gallery", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="fashionmnist")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default gallery_<dataset>.png)")
    parser.add_argument("--root", default="~/.cache/e2abl/data", help="torchvision data root")
    parser.add_argument("--download", action="store_true", help="let torchvision download missing data")
    parser.add_argument("--target-label", type=int, default=0)
    parser.add_argument("--index", type=int, default=0, help="which eligible image to show")
    parser.add_argument("--seed", type=int, default=0, help="poison seed")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/e2abl/triggers").expanduser())
    parser.add_argument("--attacks", nargs="*", default=None, help="subset of attack names (default: all)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    attacks = default_attacks()
    if args.attacks:
        unknown = sorted(set(args.attacks) - set(attacks))
        if unknown:
            parser.error(f"unknown attacks {unknown}; choose from {sorted(attacks)}")
        attacks = {name: attacks[name] for name in args.attacks}
    out = args.out or Path(f"gallery_{args.dataset}.png")
    if out.is_dir() or out.suffix.lower() != ".png":
        parser.error(f"--out {str(out)!r} must be a .png file path, e.g. gallery_{args.dataset}.png")
    if args.index < 0:
        parser.error(f"--index {args.index} must be >= 0 (which eligible image to show)")
    try:
        data = DATASETS[args.dataset](args.root, args.download)
        if not 0 <= args.target_label < len(data.classes):
            parser.error(f"--target-label {args.target_label} is outside 0..{len(data.classes) - 1}")
        progress = functools.partial(print, file=sys.stderr, flush=True)
        rows = poisoned_examples(data, attacks, args.target_label, args.index, args.seed, args.cache_dir, progress)
        write_gallery(rows, out, f"{args.dataset}: target class {data.classes[args.target_label]!r}")
    except (ValueError, OSError) as err:
        if args.debug or os.environ.get("E2ABL_DEBUG", "") not in ("", "0"):
            raise
        message = " ".join(str(err).split()).replace("set download=True", "pass --download")
        print(f"e2abl-gallery: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    print(out)


if __name__ == "__main__":
    main()
