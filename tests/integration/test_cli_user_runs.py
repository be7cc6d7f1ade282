"""What ``e2abl`` tells a user about their own run: the source rows in suspects.csv, warnings when a
command does nothing useful, the fit summary, test metrics once, and a quick ``--help``."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from e2abl_lightning.cli import HELP, SUBCOMMANDS, main
from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.triggers import StaticPattern

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["--model.init_args.backbone.init_args.layers=[16,32,16]", "--trainer.enable_progress_bar=false"]
QUIET = ["--trainer.enable_model_summary=false", "--gallery.enabled=false", "--isolation_monitor.enabled=false"]


def gunpoint(command: str = "fit", model: str = "fcn_e2abl") -> list[str]:
    files = ("trainer/cpu.yaml", "data/gunpoint_static.yaml", f"model/{model}.yaml")
    return [command, *(a for f in files for a in ("--config", str(CONFIGS / f))), *SMALL, *QUIET]


def _write_user_file(folder: Path, n: int, length: int = 24) -> np.ndarray:
    """A two-class UCR table with string labels; returns its values ``[n, length]``."""
    rng = np.random.default_rng(0)
    labels = np.array(["walk", "run"])[np.arange(n) % 2]
    values = np.sin(np.linspace(0, 6, length)[None] + 1.5 * (np.arange(n) % 2)[:, None])
    values = values + 0.1 * rng.standard_normal((n, length))
    rows = ["\t".join([label, *(f"{v:.5f}" for v in row)]) for label, row in zip(labels, values, strict=True)]
    (folder / "Gait_TRAIN.tsv").write_text("\n".join(rows) + "\n")
    (folder / "Gait_TEST.tsv").write_text("\n".join(rows[:12]) + "\n")
    return np.array([[float(v) for v in r.split("\t")[1:]] for r in rows])


def test_suspects_csv_names_the_rows_of_the_users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit on a user's file: every suspects.csv row points at the file line holding that sample, and the
    manifest maps the poisoned split positions to the file rows the datamodule poisoned. 200 rows: E2ABL's
    test flags nothing in classes of a few dozen samples, so a smaller file would leave suspects.csv empty."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "mydata"
    data.mkdir()
    values = _write_user_file(data, 200)
    user = ["--data.init_args.dataset=Gait", f"--data.init_args.data_dir={data}", "--data.init_args.poison_rate=0.2"]
    main([*gunpoint(), *user, "--trainer.max_epochs=3", "--model.init_args.policy.warmup_epochs=1"])
    run = next(tmp_path.rglob("suspects.csv")).parent
    manifest = json.loads((run / "poison_manifest.json").read_text())
    with (run / "suspects.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and len(manifest["source_indices"]) == manifest["num_train"] == 180  # 200 rows, 10% validation
    assert manifest["poison_source_indices"] == [manifest["source_indices"][i] for i in manifest["poison_indices"]]

    dm = UCRDataModule("Gait", StaticPattern(), data_dir=str(data), poison_rate=0.2, download=False)
    dm.setup("fit")
    classes = dm.raw.classes
    for row in rows:
        index, source = int(row["index"]), int(row["source_index"])
        assert source == manifest["source_indices"][index]
        assert row["source"] == f"Gait_TRAIN.tsv line {source + 1}"
        line = (data / "Gait_TRAIN.tsv").read_text().splitlines()[source].split("\t")
        expected = (values[source] - values[source].mean()) / (values[source].std() + 1e-8)
        series = dm.train_set.inputs[index, 0].numpy()
        assert np.allclose(series[4:], expected[4:], atol=1e-4)  # the static trigger covers the first 4 steps
        assert line[0] == classes[int(dm.train_set.original_targets[index])]
    for source in manifest["poison_source_indices"]:  # the rows that now carry the target label
        line = (data / "Gait_TRAIN.tsv").read_text().splitlines()[source].split("\t")
        assert line[0] != classes[manifest["target_label"]]


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[str, str]:
    main(argv)
    return capsys.readouterr()


def test_fit_warns_when_the_defense_never_acts_and_ends_with_a_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [*gunpoint(), "--model.init_args.policy.warmup_epochs=3", "--trainer.max_epochs=2"]
    expected = r"trainer.max_epochs=2 is too few for E2ABL to act: it needs at least policy.warmup_epochs \+ 2 = 5"
    with pytest.warns(UserWarning, match=expected):
        out, _ = _run([*argv, "--trainer.limit_train_batches=1"], capsys)
    assert re.search(r"e2abl fit: 2 epochs, 2 steps\n  validation: clean accuracy [\d.]+%, ASR [\d.]+%", out)
    assert "E2ABL suspected no target class" in out
    run = next(tmp_path.rglob("metrics.csv")).parent
    assert f"run directory: {run.relative_to(tmp_path)}" in out


def test_fit_on_small_classes_says_what_the_test_cannot_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """GunPoint has two classes of about 25 series: even a 20% poisoning is below what the class test
    sees, so E2ABL trains as undefended, and both the first decision's warning and the run summary say so."""
    monkeypatch.chdir(tmp_path)
    argv = [*gunpoint(), "--model.init_args.policy.warmup_epochs=1", "--trainer.max_epochs=1"]
    expected = (
        r"E2ABL cannot isolate reliably on this training set: its class test sees a poisoned population only "
        r"above \d+% of a class \(about \d+% of the training set poisoned into one class; the threat model "
        r"covers up to 20%\), so it trains as an undefended model"
    )
    with pytest.warns(UserWarning, match=expected):
        out, _ = _run(argv, capsys)
    assert re.search(expected, out), out
    assert "suspected no target class" not in out  # it did not look: the summary says why instead


def test_fit_warns_when_no_training_step_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"trainer.limit_train_batches=0: no training step runs"):
        _run([*gunpoint(), "--trainer.max_epochs=1", "--trainer.limit_train_batches=0"], capsys)


def test_test_prints_each_metric_once_and_warns_without_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"`e2abl test` without --ckpt_path runs a freshly initialised, untrained"):
        out, _ = _run(gunpoint("test"), capsys)
    for key in ("test/clean_acc", "test/asr", "test/ra"):
        assert len(re.findall(rf"^\s*{key}\s+[\d.]+$", out, flags=re.MULTILINE)) == 1, out
    assert "DataLoader" not in out


def test_help_is_quick_and_matches_the_cli(tmp_path: Path) -> None:
    """``e2abl --help`` needs no Lightning import; its subcommands are LightningCLI's."""
    from lightning.pytorch.cli import LightningCLI

    assert tuple(LightningCLI.subcommands()) == SUBCOMMANDS
    for command in SUBCOMMANDS:
        assert re.search(rf"^  {command} ", HELP, flags=re.MULTILINE)
    assert HELP.count("  e2abl ") == 2  # two examples
    code = (
        "import sys; from e2abl_lightning.cli import main; main(['--help']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: e2abl") and result.stdout.rstrip().endswith("[]")


def test_fit_never_writes_into_an_existing_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [
        *gunpoint(),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.logger.init_args.version=run",
    ]
    main(args)
    run = tmp_path / "logs" / "lightning_logs" / "run"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "already holds an earlier run's files" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_resume_with_the_same_data_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks refuse only what differs: the run's own checkpoint resumes."""
    monkeypatch.chdir(tmp_path)
    main([*gunpoint(), "--trainer.max_epochs=1", "--trainer.limit_train_batches=1"])
    last = next(tmp_path.rglob("last.ckpt"))
    main([*gunpoint(), "--trainer.max_epochs=2", "--trainer.limit_train_batches=1", f"--ckpt_path={last}"])
    saved = torch.load(sorted(tmp_path.rglob("last.ckpt"))[-1], weights_only=True)
    assert saved["epoch"] == 1 and "fingerprint" in saved["UCRDataModule"]


@pytest.mark.parametrize("epochs", [60, 7])
def test_cosine_schedule_reaches_its_minimum_at_max_epochs(epochs: int, tmp_path: Path, monkeypatch) -> None:
    """The README's ``--trainer.max_epochs 60`` on a shipped experiment config: the schedule built by the
    model anneals to its minimum at epoch 60 (no training needed)."""
    from e2abl_lightning.cli import make_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["e2abl"])
    config = CONFIGS / "experiment" / "osuleaf_static_e2abl.yaml"
    cli = make_cli(["--config", str(config), f"--trainer.max_epochs={epochs}"], run=False)
    cli.model.trainer = cli.trainer
    configured = cli.model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(epochs + 3):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert int(np.argmin(lrs)) == epochs and lrs[epochs] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lrs[:epochs], lrs[1 : epochs + 1], strict=True))  # falls all the way


def test_wandb_run_is_named_model_dataset_trigger_after_an_experiment_config(tmp_path: Path, monkeypatch) -> None:
    """configs/trainer/wandb.yaml after an experiment config whose CSVLogger has a name: the W&B run is still
    ``<Model>-<dataset>-<Trigger>`` (the documented name), the CSV run keeps the experiment's name."""
    from e2abl_lightning.cli import make_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["e2abl"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    experiment = CONFIGS / "experiment" / "osuleaf_static_e2abl.yaml"
    cli = make_cli(["--config", str(experiment), "--config", str(CONFIGS / "trainer" / "wandb.yaml")], run=False)
    csv_logger, wandb_logger = cli.trainer.loggers
    assert csv_logger.name == "osuleaf_static_e2abl"
    assert wandb_logger._wandb_init["name"] == "E2ABL-OSULeaf-StaticPattern"
    import wandb

    wandb.finish()  # the CLI's disabled run must not stay the process's run for later W&B tests
    wandb.teardown()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("warmup, acts", [(None, True), (2, True), (3, False)], ids=["default", "warmup2", "warmup3"])
def test_bench_quick_says_when_e2abl_cannot_act(warmup: int | None, acts: bool, tmp_path: Path, monkeypatch) -> None:
    """``e2abl-bench --quick`` on the demo suite runs E2ABL for 4 epochs. E2ABL decides from the end of epoch
    ``warmup_epochs - 1`` and names a target after two passing decisions, so it unlearns in the run only when
    ``max_epochs >= warmup_epochs + 2``: with the default warm-up (1) or 2 it can act; with 3 the cell says it
    cannot (before fitting)."""
    import dataclasses
    import warnings

    import e2abl_lightning.cli as cli_module
    from e2abl_lightning.bench.runner import load_suite, run_cell

    real = cli_module.make_cli

    def build_only(args, run=True):
        cli = real(args, run=False)
        cli.trainer.fit = lambda *a, **k: (_ for _ in ()).throw(_Stop())
        return cli

    monkeypatch.setattr(cli_module, "make_cli", build_only)
    monkeypatch.chdir(tmp_path)
    cell = next(c for c in load_suite("demo", quick=True) if c.defense == "e2abl")
    assert cell.max_epochs == 4
    if warmup is not None:
        cell = dataclasses.replace(cell, args=[*cell.args, f"--model.init_args.policy.warmup_epochs={warmup}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(_Stop):
            run_cell(cell, tmp_path / "out")
    too_few = [str(w.message) for w in caught if "too few for E2ABL to act" in str(w.message)]
    if acts:
        assert not too_few, too_few
    else:
        expected = r"4 epochs are too few for E2ABL to act \(it needs at least policy.warmup_epochs \+ 2 = 5\); this"
        assert len(too_few) == 1 and re.search(expected, too_few[0]), too_few


def test_gallery_reports_progress_per_attack() -> None:
    """``e2abl-gallery`` prints a line before a trained attack's setup and one as each attack is ready."""
    from e2abl_lightning.data.datasets.images import ImageSplits
    from e2abl_lightning.data.gallery import TRAINED, poisoned_examples
    from e2abl_lightning.data.triggers import BadNets, InputAware

    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 2
    data = ImageSplits(x, y, x.clone(), y.clone(), ["a", "b"], "generated")
    lines: list[str] = []
    rows = poisoned_examples(data, {"BadNets": BadNets()}, progress=lines.append)
    assert len(rows) == 1 and len(lines) == 1 and re.fullmatch(r"\[1/1\] BadNets ready \(\d+\.\d s\)", lines[0])
    assert set(TRAINED) == {"LabelConsistent", "InputAware"} and InputAware.__name__ in TRAINED
