"""A tiny E2ABL (or ABL) fit, run as a script so that Lightning's DDP launcher can re-invoke it.

Used by ``test_ddp.py`` (one process or ``--devices 2`` under DDP, on constructed series whose poisons
are trivially separable, so that E2ABL names a target and isolates samples on any machine) and
``test_reproducibility.py`` (``--manifest-only``: print GunPoint's poison manifest hash). Every rank
writes ``rank<r>.pt`` into ``--out``: E2ABL's state bank buffers (persistent and accumulators) or
ABL's isolated mask, and the model's weights.

Usage::

    python tests/reliability/_e2abl_fit.py --out DIR [--devices 2] [--batch-size 5] [--norm group] [--model abl]
        [--data gunpoint]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from e2abl_lightning.cli import end_process_group
from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.triggers import StaticPattern
from e2abl_lightning.models.baselines import ABL
from e2abl_lightning.models.e2abl import E2ABL, IsolationPolicy

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: make ``tests.helpers`` importable
from tests.helpers import SMALL_FCN, SeparableSeries, quiet_trainer  # noqa: E402

#: ``e2abl fit`` on GunPoint from the shipped configs
GUNPOINT_CONFIGS = [
    REPO / "configs" / f for f in ("trainer/cpu.yaml", "data/gunpoint_static.yaml", "model/fcn_e2abl.yaml")
]


class DDPOrder:
    """Training batches in the order DDP uses: Lightning gives every DDP rank a ``DistributedSampler`` (shuffled
    with the seed of ``seed_everything``; rank ``r`` takes positions ``r, r + W, ...`` of one permutation
    per epoch). A single process gets the same sampler with one replica, so its batch ``i`` of size
    ``W * b`` holds exactly the samples of the ranks' batches ``i`` of size ``b``."""

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        if self.trainer is not None and self.trainer.world_size > 1:
            return loader  # Lightning injects its DistributedSampler
        sampler = DistributedSampler(loader.dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last)


class OrderedUCR(DDPOrder, UCRDataModule):
    """GunPoint in DDP's order."""


class OrderedSeparable(DDPOrder, SeparableSeries):
    """Constructed training series in DDP's order."""


def per_sample_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d by GroupNorm(1, C): normalisation per sample, so a rank's batch
    statistics are the same whatever else is in the batch (SyncBatchNorm needs a GPU)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm1d):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        else:
            per_sample_norm(child)
    return module


def make_datamodule(batch_size: int, poison_seed: int = 0, data: str = "gunpoint", model: str = "e2abl") -> DDPOrder:
    if data == "separable":  # ABL: 50 series (10 poisoned); E2ABL: 200 (40 poisoned), the target's clean
        # members learnable (a bump of 3 over 6 steps: with GroupNorm, E2ABL names the target at the end of epoch 3)
        sizes = {"n_train": 200, "target_offset": 3.0, "target_span": (24, 30)} if model == "e2abl" else {"n_train": 50}
        return OrderedSeparable(**sizes, poison_rate=0.2, batch_size=batch_size, poison_seed=poison_seed)
    return OrderedUCR(
        "GunPoint",
        StaticPattern(),
        poison_rate=0.2,
        batch_size=batch_size,
        val_fraction=0.0,
        poison_seed=poison_seed,
        download=False,
    )


def manifest_hash(dm: UCRDataModule) -> str:
    """SHA-256 over the manifest's poison indices and training-set checksum."""
    manifest = dm.manifest()
    blob = json.dumps({"poison_indices": manifest["poison_indices"], "train_checksum": manifest["train_checksum"]})
    return hashlib.sha256(blob.encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--norm", choices=("batch", "group"), default="group")
    parser.add_argument("--poison-seed", type=int, default=0)
    parser.add_argument("--manifest-only", action="store_true")
    parser.add_argument("--model", choices=("e2abl", "abl"), default="e2abl")
    parser.add_argument("--data", choices=("separable", "gunpoint"), default="separable")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared CPU: one thread per process
    args.out.mkdir(parents=True, exist_ok=True)

    L.seed_everything(0, verbose=False)
    dm = make_datamodule(args.batch_size, args.poison_seed, "gunpoint" if args.manifest_only else args.data, args.model)
    if args.manifest_only:
        (args.out / "manifest_hash.txt").write_text(manifest_hash(dm))
        return
    if args.model == "abl":  # isolation 1, fine-tuning 1, then unlearning epochs (the first only evaluates)
        model = ABL(
            SMALL_FCN,
            dm.num_classes,
            dm.input_shape,
            schedule="custom",
            isolation_epochs=1,
            finetune_epochs=1,
            unlearning_epochs=args.epochs - 2,
            lga_gamma=1.0,
            isolation_ratio=0.2,
            unlearn_batch_size=4,
        )
    else:
        # decisions from the end of epoch 1; a target is named after two passing epochs in a row
        model = E2ABL(SMALL_FCN, dm.num_classes, dm.input_shape, policy=IsolationPolicy(warmup_epochs=2))
    if args.norm == "group":
        per_sample_norm(model)
    strategy = "ddp" if args.devices > 1 else "auto"
    trainer = quiet_trainer(args.epochs, devices=args.devices, strategy=strategy)
    trainer.fit(model, dm)
    if isinstance(model, ABL):
        state = {"isolated": model.isolated.detach().cpu().clone()}
    else:
        state = {name: t.detach().cpu().clone() for name, t in model.state.named_buffers()}
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("state.")}
    torch.save(
        {
            "state": state,
            "weights": weights,
            "world_size": trainer.world_size,
            "steps": trainer.global_step,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        },
        args.out / f"rank{trainer.global_rank}.pt",
    )
    end_process_group()


if __name__ == "__main__":
    main()
