"""The ``e2abl`` command: every shipped experiment config, a fit -> test round trip, errors, help."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml

from e2abl_lightning.cli import make_cli

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((REPO / "configs" / "experiment").glob("*.y*ml"))
OSULEAF_NO_DEFENSE = REPO / "configs" / "experiment" / "osuleaf_static_no_defense.yaml"
SCRIPT = Path(sys.executable).with_name("e2abl")
DATA_PACKAGE = "e2abl_lightning/data/"


def output_overrides(config: Path, tmp_path: Path) -> list[str]:
    """Arguments that send logs and checkpoints of ``config`` to ``tmp_path`` (never the repository)."""
    args = [f"--trainer.default_root_dir={tmp_path}"]
    save_dir = str(tmp_path / "logs")
    trainer = yaml.safe_load(config.read_text()).get("trainer") or {}
    logger = trainer.get("logger", "default")
    if isinstance(logger, list):  # several loggers: give the whole list back with save_dir replaced
        for entry in logger:
            if isinstance(entry, dict):
                entry.setdefault("init_args", {})["save_dir"] = save_dir
        args.append(f"--trainer.logger={json.dumps(logger)}")
    elif logger is True:  # Lightning's default logger, made explicit
        csv = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": save_dir}}
        args.append(f"--trainer.logger={json.dumps(csv)}")
    elif logger not in (False, None):  # one logger, or the CLI's default CSVLogger
        args.append(f"--trainer.logger.init_args.save_dir={save_dir}")
    return args


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from ``tmp_path`` so a relative path in a config cannot write into the repository."""
    if (REPO / "data").is_dir():  # datasets a developer keeps under the repository stay reachable
        (tmp_path / "data").symlink_to(REPO / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["e2abl"])  # make_cli gets its arguments from the test, not pytest's
    return tmp_path


def run_cli(args: list[str], config: Path):
    """``make_cli(args)``; a config whose data is not available offline is skipped with the reason."""
    try:
        return make_cli(args)
    except FileNotFoundError as err:
        frames = traceback.extract_tb(err.__traceback__)
        if frames and DATA_PACKAGE in Path(frames[-1].filename).as_posix():
            pytest.skip(f"{config.name}: its data cannot be loaded offline: {err}")
        raise
    except SystemExit as err:  # jsonargparse exits on a bad config
        pytest.fail(f"{config.name}: the CLI exited with code {err.code}")


def test_every_config_the_docs_name_exists() -> None:
    """Each ``configs/...yaml`` path in README.md and docs/ is a shipped config a user can run."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    named = {m for doc in docs for m in re.findall(r"configs/[\w/.-]+?\.ya?ml", doc.read_text())}
    assert named, "the docs name no config: is the pattern still right?"
    missing = sorted(path for path in named if not (REPO / path).is_file())
    assert not missing, f"the docs name configs that do not exist: {missing}"


def test_config_with_data_missing_offline_is_skipped(in_tmp_dir: Path) -> None:
    """The skip above fires only for our loaders' FileNotFoundError, with the reason."""
    config = yaml.safe_load(OSULEAF_NO_DEFENSE.read_text())
    config["data"]["init_args"].update(dataset="ECG5000", download=False, cache_dir=str(in_tmp_dir / "cache"))
    path = in_tmp_dir / "ecg5000.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(path), "--trainer.fast_dev_run=true", *output_overrides(path, in_tmp_dir)]
    with pytest.raises(pytest.skip.Exception, match="ecg5000.yaml: its data cannot be loaded offline.*ECG5000"):
        run_cli(args, path)


def is_image_config(config: Path) -> bool:
    """Whether ``config``'s datamodule is an image one (the torchvision sets, Fashion-MNIST, folders)."""
    from e2abl_lightning.data.datamodules.images import ImageDataModule

    module, _, name = yaml.safe_load(config.read_text())["data"]["class_path"].rpartition(".")
    return issubclass(getattr(importlib.import_module(module), name), ImageDataModule)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_config_fast_dev_run(config: Path, in_tmp_dir: Path, generated_torchvision) -> None:
    """Every shipped experiment config fits one batch. A torchvision set that is not on disk (CIFAR-10
    or GTSRB offline) is replaced by generated tensors of its real shape and class count, so the
    config's own trigger, poisoning, augmentation and model still run."""
    generated = generated_torchvision(fallback=True)
    args = [
        "fit",
        "--config",
        str(config),
        "--trainer.fast_dev_run=true",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--data.init_args.num_workers=0",
        *output_overrides(config, in_tmp_dir),
    ]
    if is_image_config(config):  # trained triggers of generated data stay out of the user's cache
        args.append(f"--data.init_args.cache_dir={in_tmp_dir / 'triggers'}")
    cli = run_cli(args, config)
    if generated:
        assert cli.datamodule.raw.source.startswith("generated stand-in"), cli.datamodule.raw.source
    assert cli.trainer.state.finished, f"{config.name}: fit did not finish ({cli.trainer.state.status})"
    assert cli.trainer.global_step >= 1
    metrics = cli.trainer.callback_metrics
    loss = metrics.get("train/loss")
    assert loss is not None and math.isfinite(float(loss)), f"{config.name}: train/loss {loss}"
    for key in ("val/clean_acc", "val/asr"):
        assert key in metrics, f"{config.name}: {key} was not logged (got {sorted(metrics)})"
        assert 0.0 <= float(metrics[key]) <= 1.0


@pytest.mark.slow
def test_fit_then_test_from_last_checkpoint(in_tmp_dir: Path) -> None:
    config = OSULEAF_NO_DEFENSE
    overrides = output_overrides(config, in_tmp_dir)
    fit = run_cli(["fit", "--config", str(config), "--trainer.max_epochs=2", *overrides], config)
    assert fit.trainer.current_epoch == 2
    checkpoints = sorted(in_tmp_dir.rglob("last.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    last = checkpoints[0]
    run_dir = last.parent.parent
    assert (run_dir / "config.yaml").is_file()
    manifest = json.loads((run_dir / "poison_manifest.json").read_text())
    assert manifest["dataset"] == "OSULeaf" and manifest["target_label"] == 0
    assert manifest["num_poisoned"] == len(manifest["poison_indices"]) == round(0.1 * manifest["num_train"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2
    assert saved["model"]["class_path"] == "e2abl_lightning.models.baselines.NoDefense"

    test = run_cli(["test", "--config", str(config), "--ckpt_path", str(last), *overrides], config)
    metrics = test.trainer.callback_metrics
    for key in ("test/clean_acc", "test/asr", "test/ra"):
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
        assert 0.0 <= float(metrics[key]) <= 1.0, f"{key}={float(metrics[key])}"
    # the test run used the checkpoint's weights, not a fresh model
    assert test.trainer.ckpt_path is not None and Path(test.trainer.ckpt_path) == last
    saved_weights = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    for name, value in test.model.state_dict().items():
        assert torch.equal(value.cpu(), saved_weights[name]), name


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"console script {SCRIPT} is not installed (pip install -e .)"
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_unknown_config_key_fails_naming_it(tmp_path: Path) -> None:
    config = yaml.safe_load(OSULEAF_NO_DEFENSE.read_text())
    config["data"]["init_args"]["poison_ratio"] = 0.2  # a typo of poison_rate
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = run_script(
        "fit", "--config", str(bad), "--trainer.fast_dev_run=true", *output_overrides(bad, tmp_path), cwd=tmp_path
    )
    assert result.returncode != 0
    assert "poison_ratio" in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")), "nothing trains on a bad config"


def test_unknown_command_line_key_fails_naming_it(tmp_path: Path) -> None:
    result = run_script("fit", "--config", str(OSULEAF_NO_DEFENSE), "--trainer.not_a_trainer_key=3", cwd=tmp_path)
    assert result.returncode != 0
    assert "not_a_trainer_key" in result.stderr


def test_console_script_help(tmp_path: Path) -> None:
    result = run_script("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: e2abl" in result.stdout
    for command in ("fit", "validate", "test", "predict"):
        assert command in result.stdout


def test_console_script_print_config(tmp_path: Path) -> None:
    result = run_script("fit", "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["seed_everything"] == 0
    assert printed["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert {"model", "data", "trainer", "ckpt_path"} <= set(printed)

    result = run_script("fit", "--config", str(OSULEAF_NO_DEFENSE), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["class_path"] == "e2abl_lightning.models.baselines.NoDefense"
    assert printed["data"]["init_args"]["dataset"] == "OSULeaf"
    assert printed["data"]["init_args"]["trigger"]["class_path"] == "e2abl_lightning.data.triggers.StaticPattern"
    assert list(tmp_path.iterdir()) == [], "--print_config writes nothing"
