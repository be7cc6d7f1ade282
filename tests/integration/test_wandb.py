"""``configs/trainer/wandb.yaml`` offline and disabled, and the CLI's progress-bar default."""

from __future__ import annotations

import glob
import json
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from e2abl_lightning.callbacks import IsolationMonitor, TriggerGallery
from e2abl_lightning.cli import make_cli

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
SHORT_E2ABL = [
    "--config",
    str(CONFIGS / "data" / "gunpoint_static.yaml"),
    "--config",
    str(CONFIGS / "model" / "fcn_e2abl.yaml"),
    "--model.init_args.backbone.init_args.layers=[16, 32, 16]",
    "--model.init_args.policy.warmup_epochs=2",
    "--data.init_args.poison_rate=0.2",
    "--data.init_args.batch_size=8",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.log_every_n_steps=1",
]


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from ``tmp_path``: the configs' relative ``logs`` folder lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["e2abl"])
    return tmp_path


@pytest.fixture
def wandb_offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import wandb

    wandb.teardown()  # W&B keeps the settings of its first setup in the process: start afresh
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.finish()
    wandb.teardown()


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf records of an offline ``run-*.wandb`` file (LevelDB-style log after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buffer = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buffer = chunk if kind in (1, 2) else buffer + chunk  # full/first, then middle/last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buffer)
            yield record


def finished_records(path: Path, timeout: float = 60.0) -> list[object]:
    """The records once W&B's core has written the run's exit record (``wandb.finish`` returns before)."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.mark.slow
def test_wandb_offline_run_holds_metrics_config_and_media(in_tmp_dir: Path, wandb_offline: None) -> None:
    import wandb

    args = ["fit", *SHORT_E2ABL, "--config", str(CONFIGS / "trainer" / "wandb.yaml"), "--trainer.max_epochs=3"]
    args += ["--isolation_monitor.every_n_epochs=1"]
    cli = make_cli(args)
    assert cli.trainer.state.finished
    assert [type(lg) for lg in cli.trainer.loggers] == [CSVLogger, WandbLogger]
    wandb.finish()

    runs = glob.glob(str(in_tmp_dir / "logs" / "wandb" / "offline-run-*"))
    assert len(runs) == 1, runs
    run = Path(runs[0])
    files = run / "files"
    images = {
        p.relative_to(files / "media" / "images").parent.as_posix() + "/" + p.name.split("_")[0]
        for p in (files / "media" / "images").rglob("*.png")
    }
    assert {"isolation/score", "isolation/pr", "data/trigger", "val/poisoned"} <= images, images
    assert list((files / "media" / "table" / "isolation").glob("isolated_samples_*.table.json"))
    assert (files / "suspects.csv").read_text().startswith("index,source_index,source,score,given,recovered")
    decisions = (files / "decisions.csv").read_text()
    assert decisions == (Path(cli.trainer.log_dir) / "decisions.csv").read_text()
    assert decisions.startswith("epoch,class,view,dip,p,adjusted_p,trapped,passing,named,confused_share")

    history, config, runs_seen = set(), {}, []
    for record in finished_records(next(run.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            runs_seen.append((record.run.display_name, list(record.run.tags), record.run.project))
        elif kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "config":
            config |= {item.key or "/".join(item.nested_key): item.value_json for item in record.config.update}
    assert runs_seen == [("E2ABL-GunPoint-StaticPattern", ["E2ABL", "GunPoint", "StaticPattern"], "e2abl")]
    assert {"val/clean_acc", "val/asr", "train/loss", "isolation/precision", "isolation/recall"} <= history
    full = json.loads(config["cli"])  # the whole parsed CLI config
    assert full["model"]["class_path"] == "e2abl_lightning.models.e2abl.E2ABL"
    assert full["data"]["init_args"]["dataset"] == "GunPoint" and full["trainer"]["max_epochs"] == 3
    # the model's hyperparameters, from Lightning: the isolation policy as one dict
    assert json.loads(config["policy"]) == {"alpha": 0.2, "min_share": 0.05, "warmup_epochs": 2}

    csv_run = Path(cli.trainer.log_dir)  # the CSVLogger's run: metrics, suspects, the same pictures
    assert (csv_run / "metrics.csv").is_file() and (csv_run / "suspects.csv").is_file()
    assert (csv_run / "media" / "isolation_pr_curve.png").is_file()


def test_wandb_disabled_is_a_no_op(in_tmp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    wandb.teardown()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = ["fit", *SHORT_E2ABL, "--config", str(CONFIGS / "trainer" / "wandb.yaml"), "--trainer.max_epochs=1"]
    cli = make_cli(args)
    assert cli.trainer.state.finished
    assert not (in_tmp_dir / "logs" / "wandb").exists()
    assert (Path(cli.trainer.log_dir) / "media" / "data_trigger_gallery.png").is_file()


def test_media_callbacks_and_rich_bar_are_cli_defaults(in_tmp_dir: Path) -> None:
    cli = make_cli(SHORT_E2ABL, run=False)
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert TriggerGallery in kinds and IsolationMonitor in kinds
    assert isinstance(cli.trainer.progress_bar_callback, RichProgressBar)


def test_bench_trainer_without_progress_bar_still_builds(in_tmp_dir: Path) -> None:
    args = ["--config", str(CONFIGS / "trainer" / "bench.yaml"), *SHORT_E2ABL]
    cli = make_cli(args, run=False)
    assert cli.trainer.progress_bar_callback is None
    assert not any(isinstance(c, RichProgressBar) for c in cli.trainer.callbacks)
