"""``python -m e2abl_lightning.bench.poisoning``: how long poisoning a whole training set takes.

Times ``setup`` plus applying each fixed image trigger to every training image, the way the
datamodule does it (vectorised, in chunks, once per run; the result is then cached in memory). The
cost depends only on the number and shape of the images, so ``--shape 3 32 32 --num 50000`` measures
CIFAR-10's case on random pixels when CIFAR-10 is not on disk.
"""

from __future__ import annotations

import argparse
import time

import torch

from e2abl_lightning.data.poison import apply_trigger
from e2abl_lightning.data.triggers import BPP, SIG, BadNets, Blend, FTrojan, Trojan, WaNet

FIXED_TRIGGERS = {
    "badnets": BadNets,
    "blend": Blend,
    "sig": SIG,
    "trojan": Trojan,
    "wanet": WaNet,
    "bpp": BPP,
    "ftrojan": FTrojan,
}


def time_triggers(x: torch.Tensor, y: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds to set up and apply each fixed trigger to all of ``x`` ``[N, C, H, W]``."""
    out = {}
    for name, cls in FIXED_TRIGGERS.items():
        best = float("inf")
        for _ in range(repeats):
            generator = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            trigger = cls()
            trigger.setup(x, y, 0, generator)
            apply_trigger(x, trigger, generator)
            best = min(best, time.perf_counter() - start)
        out[name] = best
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m e2abl_lightning.bench.poisoning", description=__doc__)
    parser.add_argument("--num", type=int, default=50_000, help="number of images")
    parser.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    x = torch.rand(args.num, *args.shape, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (args.num,), generator=torch.Generator().manual_seed(1))
    times = time_triggers(x, y, args.repeats)
    print(f"poisoning all {args.num} images of shape {tuple(args.shape)}, {torch.get_num_threads()} threads:")
    print("| trigger | seconds |\n|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
