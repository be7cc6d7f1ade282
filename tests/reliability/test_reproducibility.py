"""Same config and seeds, same poisoned data, in any process; a run directory says how it was made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _e2abl_fit import GUNPOINT_CONFIGS, make_datamodule, manifest_hash

from e2abl_lightning import __version__
from e2abl_lightning.cli import make_cli
from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.triggers import StaticPattern

SCRIPT = Path(__file__).with_name("_e2abl_fit.py")


def test_poison_manifest_is_identical_across_processes(tmp_path: Path) -> None:
    """Poison indices and the training-set checksum depend on the seeds only, never on the process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    runs = {"a": 0, "b": 0}
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(SCRIPT), "--manifest-only", "--out", str(tmp_path / name), "--poison-seed", str(seed)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, seed in runs.items()
    }
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}:\n{output[-2000:]}"
    hashes = {name: (tmp_path / name / "manifest_hash.txt").read_text() for name in runs}
    torch.manual_seed(1234)  # the global RNG plays no part
    here = manifest_hash(make_datamodule(batch_size=10, poison_seed=0))
    assert hashes["a"] == hashes["b"] == here
    assert manifest_hash(make_datamodule(batch_size=10, poison_seed=1)) != here  # the seed does matter


@pytest.fixture
def cli_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``e2abl fit`` on GunPoint for one short epoch; returns its run directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["e2abl"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    args = [
        "fit",
        *(a for config in GUNPOINT_CONFIGS for a in ("--config", str(config))),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--gallery.enabled=false",
    ]
    try:
        cli = make_cli(args)
    finally:
        torch.set_num_threads(threads)
    assert cli.trainer.state.finished
    return Path(cli.trainer.log_dir)


def test_cli_run_directory_holds_config_manifest_and_version(cli_run: Path) -> None:
    config = yaml.safe_load((cli_run / "config.yaml").read_text())
    assert config["data"]["init_args"]["dataset"] == "GunPoint"
    assert config["seed_everything"] == 0
    manifest = json.loads((cli_run / "poison_manifest.json").read_text())
    assert manifest["package_version"] == __version__
    # the manifest is reproducible from the config alone
    again = UCRDataModule("GunPoint", StaticPattern(), poison_rate=0.1, target_label=0, batch_size=16).manifest()
    assert manifest["poison_indices"] == again["poison_indices"]
    assert manifest["train_checksum"] == again["train_checksum"]
    last = cli_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)  # CLI checkpoints hold no pickled objects either
    assert checkpoint["hyper_parameters"]["_class_path"] == "e2abl_lightning.models.e2abl.E2ABL"
