"""The bad-input catalogue: every wrong input a user can give, each answered by one clear error.

Each case names the exception type and a pattern the message must match: the offending value (or
file) and what to do instead. Each case runs in an empty working directory and must leave nothing
behind but the input files it made itself (no run directory, checkpoint or report). Some cases are
also tested next to their code (tests/unit/...); this file is the one list of them all.
"""

# ruff: noqa: E501  (the catalogue is a table: one case per line)

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from _e2abl_fit import GUNPOINT_CONFIGS
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from e2abl_lightning.cli import check_checkpoint, make_cli
from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.datamodules.base import BackdoorDataModule, RawData
from e2abl_lightning.data.poison import PoisonedDataset, select_poison_indices
from e2abl_lightning.data.triggers import StaticPattern
from e2abl_lightning.data.triggers.image import BadNets, Blend
from e2abl_lightning.models.backbones import FCN
from e2abl_lightning.models.baselines.abl import ABL
from e2abl_lightning.models.e2abl import E2ABL, IsolationPolicy
from e2abl_lightning.report import ReportError, make_report
from tests.helpers import SMALL_FCN, SeparableSeries, quiet_trainer, tiny_e2abl, tiny_fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---- helpers that build inputs ---------------------------------------------------------------------
def _gunpoint(**kwargs) -> UCRDataModule:
    return UCRDataModule("GunPoint", StaticPattern(), download=False, **kwargs)


class _ArrayDataModule(BackdoorDataModule):
    """A datamodule over given arrays (for NaN/inf inputs)."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__(StaticPattern(), poison_rate=0.1, batch_size=4)
        self.x = x

    def load_raw(self) -> RawData:
        y = torch.arange(self.x.shape[0]) % 2
        return RawData(self.x, y, self.x.clone(), y.clone(), ["a", "b"], "arrays", "test")


def _series_with(value: float) -> torch.Tensor:
    x = torch.randn(20, 1, 32)
    x[3, 0, 7] = value
    return x


def _png(path: Path, size: int) -> Path:
    Image.fromarray(np.full((size, size), 128, dtype=np.uint8)).save(path)
    return path


def _garbage(path: Path, n: int = 4096) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def _tiny_fit(root: Path, val_fraction: float = 0.1, epochs: int = 1, ckpt_path: Path | None = None) -> L.Trainer:
    callbacks = [] if ckpt_path else [ModelCheckpoint(dirpath=root, save_last=True, save_on_train_epoch_end=True)]
    dm = _gunpoint(poison_rate=0.2, batch_size=16, val_fraction=val_fraction)
    fit = tiny_fit(
        epochs,
        dm,
        callbacks,
        {"warmup_epochs": 1},
        ckpt_path,
        enable_checkpointing=not ckpt_path,
        default_root_dir=root,
    )
    return fit.trainer


@pytest.fixture(scope="module")
def gunpoint_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a one-epoch E2ABL run on GunPoint with a 10% validation split (45 training series)."""
    root = tmp_path_factory.mktemp("gunpoint_ckpt")
    _tiny_fit(root)
    return root / "last.ckpt"


def _run_dir_with_metrics(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,val/clean_acc,val/asr\n0,1,0.9,0.5\n1,2,0.95,0.1\n")
    return run


# ---- the catalogue ---------------------------------------------------------------------------------
@dataclass
class Case:
    """``prepare(tmp_path)`` writes any input files and returns the call that must fail."""

    id: str
    prepare: Callable[[Path], Callable[[], object]]
    error: type[BaseException]
    match: str


def _call(fn: Callable[..., object], *args, **kwargs) -> Callable[[Path], Callable[[], object]]:
    return lambda _: functools.partial(fn, *args, **kwargs)


def _dm_then(attribute: str, **kwargs) -> Callable[[Path], Callable[[], object]]:
    """Build the datamodule, then touch ``attribute`` (``setup`` is called) where the data is read."""

    def action() -> object:
        dm = _gunpoint(**kwargs)
        return dm.setup("fit") if attribute == "setup" else getattr(dm, attribute)

    return lambda _: action


E2ABL_ARGS = dict(backbone=SMALL_FCN, num_classes=2, input_shape=(1, 150))


def _e2abl_with_policy(**policy) -> Callable[[Path], Callable[[], object]]:
    """E2ABL with ``policy=IsolationPolicy(**policy)``, both built inside the call that must fail."""
    return lambda _: lambda: E2ABL(**E2ABL_ARGS, policy=IsolationPolicy(**policy))


ABL_ARGS = dict(backbone=SMALL_FCN, num_classes=2, input_shape=(1, 150))


def _blend_setup(image: Callable[[Path], Path], resize: bool) -> Callable[[Path], Callable[[], object]]:
    def prepare(tmp: Path) -> Callable[[], object]:
        path = image(tmp)
        x = torch.rand(4, 1, 28, 28)
        return lambda: Blend(image_path=str(path), resize=resize).setup(x, torch.zeros(4), 0, torch.Generator())

    return prepare


def _resume_other_size(checkpoint: Callable[[], Path]) -> Callable[[Path], Callable[[], object]]:
    return lambda tmp: lambda: _tiny_fit(tmp, val_fraction=0.2, epochs=2, ckpt_path=checkpoint())


def _truncated(checkpoint: Callable[[], Path]) -> Callable[[Path], Callable[[], object]]:
    def prepare(tmp: Path) -> Callable[[], object]:
        path = tmp / "truncated.ckpt"
        data = checkpoint().read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return lambda: check_checkpoint(path)

    return prepare


def _report_with_manifest(text: str) -> Callable[[Path], Callable[[], object]]:
    def prepare(tmp: Path) -> Callable[[], object]:
        run = _run_dir_with_metrics(tmp)
        (run / "poison_manifest.json").write_text(text)
        return lambda: make_report(run)

    return prepare


_CHECKPOINT: list[Path] = []  # filled by the fixture for the cases that need a real checkpoint

CASES = [
    # poisoning settings
    Case("poison_rate_zero", _call(_gunpoint, poison_rate=0.0), ValueError, r"poison_rate=0.0 must be strictly between 0 and 1"),
    Case("poison_rate_above_one", _call(_gunpoint, poison_rate=1.5), ValueError, r"poison_rate=1.5 must be strictly between 0 and 1"),
    Case("poison_rate_poisons_none", _dm_then("setup", poison_rate=0.001), ValueError, r"poison_rate=0.001 of 45 training samples poisons none; raise poison_rate"),
    Case("poison_rate_too_many_candidates", _dm_then("setup", poison_rate=0.9), ValueError, r"poison_rate=0.9 asks for \d+ poisoned samples .* lower poison_rate"),
    Case("target_label_too_large", _dm_then("num_classes", target_label=5), ValueError, r"target_label=5 is outside the 2 classes; choose a label in 0..1"),
    Case("target_label_negative", _dm_then("num_classes", target_label=-1), ValueError, r"target_label=-1 is outside the 2 classes"),
    Case("attack_mode_unknown", _call(_gunpoint, attack_mode="all_to_some"), ValueError, r"attack_mode='all_to_some' is unknown; choose one of"),
    Case("val_fraction_too_large", _call(_gunpoint, val_fraction=0.7), ValueError, r"val_fraction=0.7 must be in \[0, 0.5\)"),
    Case("batch_size_zero", _call(_gunpoint, batch_size=0), ValueError, r"batch_size=0 .* must be >= 1"),
    Case("trigger_not_a_trigger", _call(UCRDataModule, "GunPoint", "StaticPattern"), ValueError, r"trigger must be a Trigger instance, got str"),
    Case("training_split_empty", _call(select_poison_indices, torch.zeros(0, dtype=torch.long), 0.1, 0), ValueError, r"the training split is empty \(0 labels\): there is nothing to poison"),
    # shapes
    Case("backbone_input_shape_1d", _call(FCN, (150,), 2), ValueError, r"expect input_shape \(C, L\), got \(150,\)"),
    Case("image_trigger_on_series", _call(BadNets().apply, torch.zeros(2, 1, 150), torch.Generator()), ValueError, r"image triggers expect \[N, C, H, W\] inputs, got shape \(2, 1, 150\)"),
    Case("dataset_lengths_differ", _call(PoisonedDataset, torch.zeros(3, 1, 8), torch.zeros(2), torch.zeros(3), torch.zeros(3)), ValueError, r"must have the same length"),
    Case("blend_image_wrong_size", _blend_setup(lambda t: _png(t / "trigger.png", 5), resize=False), ValueError, r"trigger\.png' is 5x5 but the data is 28x28; resize it or pass resize=True"),
    Case("blend_image_missing", lambda t: lambda: Blend(image_path=str(t / "nope.png")), ValueError, r"image_path='.*nope\.png' is not a file"),
    Case("blend_image_corrupted", _blend_setup(lambda t: _garbage(t / "trigger.png"), resize=True), ValueError, r"trigger\.png' cannot be read as an image .*give a PNG/JPEG file"),
    # data availability and values
    Case("ucr_unknown_name", lambda t: lambda: UCRDataModule("GunPiont", StaticPattern(), download=False).num_classes, ValueError, r"dataset='GunPiont' is not a UCR/UEA dataset; bundled offline: .*GunPoint"),
    Case("ucr_not_bundled_offline", lambda t: lambda: UCRDataModule("ECG5000", StaticPattern(), download=False, cache_dir=str(t / "cache")).num_classes, FileNotFoundError, r"dataset 'ECG5000' is not cached .*data_dir=<folder>"),
    Case("ucr_data_dir_without_files", lambda t: lambda: UCRDataModule("GunPoint", StaticPattern(), data_dir=str(t)).num_classes, FileNotFoundError, r"has no GunPoint_TRAIN/GunPoint_TEST .* or unset data_dir"),
    Case("nan_inputs", _call(lambda: _ArrayDataModule(_series_with(float("nan"))).raw), ValueError, r"arrays: the train split holds NaN or inf values; clean the data first"),
    Case("inf_inputs", _call(lambda: _ArrayDataModule(_series_with(float("inf"))).raw), ValueError, r"arrays: the train split holds NaN or inf values"),
    # models
    Case("shallow_layer_unknown", _call(E2ABL, **E2ABL_ARGS, shallow_layer="net.convblock9"), ValueError, r"shallow_layer='net.convblock9' is not a submodule of FCN; e.g. \["),
    Case("e2abl_num_classes_one", _call(E2ABL, SMALL_FCN, 1, (1, 150)), ValueError, r"num_classes=1 must be at least 2"),
    Case("e2abl_policy_alpha_above_one", _e2abl_with_policy(alpha=1.5), ValueError, r"alpha=1.5 must be in \(0, 1\), e.g. 0.2"),
    Case("e2abl_policy_alpha_zero", _e2abl_with_policy(alpha=0.0), ValueError, r"alpha=0.0 must be in \(0, 1\), e.g. 0.2"),
    Case("e2abl_policy_alpha_nan", _e2abl_with_policy(alpha=float("nan")), ValueError, r"alpha=nan must be in \(0, 1\)"),
    Case("e2abl_policy_min_share_one", _e2abl_with_policy(min_share=1.0), ValueError, r"min_share=1.0 must be in \(0, 1\), e.g. 0.05"),
    Case("e2abl_policy_min_share_negative", _e2abl_with_policy(min_share=-0.1), ValueError, r"min_share=-0.1 must be in \(0, 1\)"),
    Case("e2abl_policy_warmup_epochs", _e2abl_with_policy(warmup_epochs=0), ValueError, r"warmup_epochs=0 must be at least 1"),
    Case("e2abl_policy_alpha_string", _e2abl_with_policy(alpha="0.05"), TypeError, r"alpha='0.05' must be a number, not str"),
    Case("e2abl_policy_warmup_float", _e2abl_with_policy(warmup_epochs=1.5), TypeError, r"warmup_epochs=1.5 must be a number \(whole\), not float"),
    Case("e2abl_policy_min_share_bool", _e2abl_with_policy(min_share=True), TypeError, r"min_share=True must be a number, not bool"),
    Case("e2abl_poolings", _call(E2ABL, **E2ABL_ARGS, shallow_poolings=("median",)), ValueError, r"shallow_poolings='median' is not allowed"),
    # knobs of the old isolation policy are gone: a script that still passes one is told which
    Case("e2abl_removed_isolation_ratio", _call(E2ABL, **E2ABL_ARGS, isolation_ratio=0.2), TypeError, r"unexpected keyword argument 'isolation_ratio'"),
    Case("e2abl_moved_warmup_epochs", _call(E2ABL, **E2ABL_ARGS, warmup_epochs=2), TypeError, r"unexpected keyword argument 'warmup_epochs'"),
    Case("e2abl_removed_ascent_weight", _call(E2ABL, **E2ABL_ARGS, ascent_weight=1.0), TypeError, r"unexpected keyword argument 'ascent_weight'"),
    Case("abl_isolation_loss", _call(ABL, **ABL_ARGS, isolation_loss="huber"), ValueError, r"isolation_loss='huber' is not allowed"),
    Case("abl_lga_gamma", _call(ABL, **ABL_ARGS, lga_gamma=0.0), ValueError, r"lga_gamma=0.0 must be positive"),
    Case("abl_isolation_ratio", _call(ABL, **ABL_ARGS, isolation_ratio=1.0), ValueError, r"isolation_ratio=1.0 must be in \(0, 1\)"),
    Case("abl_schedule", _call(ABL, **ABL_ARGS, schedule="fast"), ValueError, r"schedule='fast' is not allowed"),
    Case("abl_unlearn_ceiling", _call(ABL, **ABL_ARGS, unlearn_loss_ceiling=-1.0), ValueError, r"unlearn_loss_ceiling=-1.0 must be positive"),
    # checkpoints and run files
    Case("checkpoint_garbage_bytes", lambda t: functools.partial(check_checkpoint, _garbage(t / "x.ckpt")), ValueError, r"ckpt_path='.*x\.ckpt' is not a PyTorch checkpoint .*corrupted or truncated"),
    Case("checkpoint_truncated", _truncated(lambda: _CHECKPOINT[0]), ValueError, r"truncated\.ckpt' is not a PyTorch checkpoint"),
    Case("checkpoint_missing", lambda t: functools.partial(check_checkpoint, t / "none.ckpt"), FileNotFoundError, r"none\.ckpt' does not exist; pass the last\.ckpt"),
    Case("checkpoint_other_dataset_size", _resume_other_size(lambda: _CHECKPOINT[0]), ValueError, r"state bank holds 45 training samples but the training set has 40: resume with the dataset"),
    Case("manifest_not_json", _report_with_manifest('{"dataset": "GunPoint", '), ReportError, r"poison_manifest\.json is not valid JSON .*restore or delete it"),
    Case("manifest_not_a_dict", _report_with_manifest("[1, 2]"), ReportError, r"poison_manifest\.json holds a list, not a poison manifest"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_error(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gunpoint_checkpoint: Path
) -> None:
    _CHECKPOINT[:] = [gunpoint_checkpoint]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # anything written to a relative path would show up below
    action = case.prepare(work)
    before = _files(work)
    with pytest.raises(case.error, match=case.match) as raised:
        action()
    message = str(raised.value)
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    assert _files(work) == before, "partial output left behind"


# ---- the command line --------------------------------------------------------------------------------
def _cli_case_unknown_yaml_key(tmp: Path) -> list[str]:
    config = yaml.safe_load(GUNPOINT_CONFIGS[1].read_text())
    config["data"]["init_args"]["poison_ratio"] = 0.2  # a typo of poison_rate
    path = tmp / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--config", str(GUNPOINT_CONFIGS[0]), "--config", str(path), "--config", str(GUNPOINT_CONFIGS[2])]


def _cli_case_unknown_flag(tmp: Path) -> list[str]:
    return [*(a for c in GUNPOINT_CONFIGS for a in ("--config", str(c))), "--trainer.not_a_trainer_key=3"]


def _cli_case_bad_value(tmp: Path) -> list[str]:
    return [*(a for c in GUNPOINT_CONFIGS for a in ("--config", str(c))), "--data.init_args.poison_rate=high"]


@pytest.mark.parametrize(
    "build, pattern",
    [
        (_cli_case_unknown_yaml_key, r"poison_ratio"),
        (_cli_case_unknown_flag, r"not_a_trainer_key"),
        (_cli_case_bad_value, r"poison_rate"),
    ],
    ids=["unknown_yaml_key", "unknown_flag", "value_of_wrong_type"],
)
def test_cli_config_errors_name_the_key(
    build, pattern: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["e2abl"])  # make_cli reads the test's arguments, not pytest's
    args = ["fit", *build(tmp_path), f"--trainer.default_root_dir={tmp_path}"]
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        make_cli(args)
    assert exit_info.value.code != 0
    assert re.search(pattern, capsys.readouterr().err)
    assert _files(tmp_path) == before  # no run directory


def test_cli_corrupted_checkpoint_fails_before_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["e2abl"])
    garbage = _garbage(tmp_path / "last.ckpt")
    args = ["fit", *(a for c in GUNPOINT_CONFIGS for a in ("--config", str(c))), f"--ckpt_path={garbage}"]
    with pytest.raises(ValueError, match=r"last\.ckpt' is not a PyTorch checkpoint"):
        make_cli(args)
    assert _files(tmp_path) == {"last.ckpt"}  # no logs/ run directory


# ---- training that diverges, and unlearning that must not ------------------------------------------
def _separable_fit(lr: float, epochs: int, root: Path | None = None) -> tuple[E2ABL, L.Trainer]:
    """SGD at ``lr`` on constructed data whose poisons every run isolates; with ``root``, a checkpoint
    callback writes ``last.ckpt`` there at every training epoch end."""
    L.seed_everything(0, verbose=False)
    dm = SeparableSeries(target_offset=4.0)
    model = tiny_e2abl(dm, optimizer=functools.partial(torch.optim.SGD, lr=lr))
    checkpoints = [] if root is None else [ModelCheckpoint(dirpath=root, save_last=True, save_on_train_epoch_end=True)]
    overrides = {} if root is None else {"enable_checkpointing": True, "default_root_dir": root}
    trainer = quiet_trainer(epochs, checkpoints, **overrides)
    trainer.fit(model, dm)
    return model, trainer


def test_isolated_samples_are_unlearned_without_diverging() -> None:
    """The complementary loss on isolated samples needs no ceiling: six epochs of SGD in which the poisons
    are isolated (named by the end of epoch 4, unlearned in epoch 5) end with finite weights, losses and scores."""
    model, trainer = _separable_fit(0.1, 6)
    state = model.state
    assert trainer.state.finished and int(state.suspected_target) == 0 and int(state.isolated.sum()) > 0
    assert int(state.flag_count.max()) >= 3  # named before the last epoch: isolated samples were trained on
    assert all(bool(p.isfinite().all()) for p in model.parameters())
    assert all(bool(torch.isfinite(v)) for k, v in trainer.callback_metrics.items() if k.startswith("train/loss"))
    assert "train/loss" in trainer.callback_metrics
    assert bool(state.pred_ema.isfinite().all()) and bool(state.score.isfinite().all())


def test_diverging_run_stops_with_one_clear_error(tmp_path: Path) -> None:
    """A step size that blows the weights up (SGD with lr=1e20) ends the run at that epoch's end with one
    line, before the epoch's checkpoint is written."""
    with pytest.raises(ValueError, match=r"E2ABL diverged in epoch") as raised:
        _separable_fit(1e20, 3, tmp_path)
    found = re.fullmatch(
        r"E2ABL diverged in epoch (\d+): losses or weights hold NaN or inf; lower the lr", str(raised.value)
    )
    assert found, f"not the one-line divergence error: {raised.value!r}"
    assert found.group(1) == "0", "lr=1e20 blows the weights up in the first epoch"
    assert not list(tmp_path.rglob("*.ckpt")), "the diverged epoch was checkpointed"
