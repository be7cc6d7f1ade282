"""Bad input through the interfaces a user types: ``e2abl``, ``e2abl-gallery``, ``e2abl-bench`` and the Python API.

Every CLI case runs ``main([...])`` in process from an empty working directory and must exit with
code 2, print one ``<tool>: error:`` line naming the offending value, print no traceback, and leave
nothing behind but the input files it made itself (no run directory). Python API cases must raise
the documented exception type naming the argument. ``test_bad_input.py`` holds the same kind of
cases for the library calls below the CLI.
"""

# ruff: noqa: E501  (the catalogue is a table: one case per line)

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from e2abl_lightning.bench.runner import main as bench_main
from e2abl_lightning.cli import main
from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.gallery import main as gallery_main
from e2abl_lightning.data.triggers import StaticPattern
from e2abl_lightning.models.e2abl import E2ABL, IsolationPolicy
from tests.helpers import SMALL_FCN

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUICK = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=1",
    "--trainer.limit_val_batches=1",
    "--data.init_args.download=false",
    "--gallery.enabled=false",
    "--isolation_monitor.enabled=false",
]


def gunpoint(model: str = "fcn_e2abl", command: str = "fit") -> list[str]:
    files = ("trainer/cpu.yaml", "data/gunpoint_static.yaml", f"model/{model}.yaml")
    return [command, *(a for f in files for a in ("--config", str(CONFIGS / f))), *QUICK]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---- inputs a case writes --------------------------------------------------------------------------
def _row(label: str, values: list[str]) -> str:
    return "\t".join([label, *values])


def _series(i: int, length: int = 24) -> list[str]:
    rng = np.random.default_rng(i)
    return [f"{v:.4f}" for v in np.sin(np.linspace(0, 6, length) + i % 2) + 0.1 * rng.standard_normal(length)]


def _ucr_folder(tmp: Path, train: list[str] | None, test: list[str] | None, name: str = "Toy") -> Path:
    folder = tmp / "ucr"
    folder.mkdir(exist_ok=True)
    if train is not None:
        (folder / f"{name}_TRAIN.tsv").write_text("\n".join(train) + ("\n" if train else ""))
    if test is not None:
        (folder / f"{name}_TEST.tsv").write_text("\n".join(test) + "\n")
    return folder


def _good_rows(n: int, labels: tuple[str, ...] = ("a", "b")) -> list[str]:
    return [_row(labels[i % len(labels)], _series(i)) for i in range(n)]


def _with(rows: list[str], index: int, row: str) -> list[str]:
    return [row if i == index else r for i, r in enumerate(rows)]


def ucr(train: Callable[[], list[str] | None], test: Callable[[], list[str] | None] = lambda: _good_rows(10)):
    """Args for a fit on a user's UCR folder whose files ``train``/``test`` build."""

    def prepare(tmp: Path) -> list[str]:
        folder = _ucr_folder(tmp, train(), test())
        return [*gunpoint(), "--data.init_args.dataset=Toy", f"--data.init_args.data_dir={folder}"]

    return prepare


def args(*extra: str, model: str = "fcn_e2abl", command: str = "fit") -> Callable[[Path], list[str]]:
    return lambda tmp: [*gunpoint(model, command), *extra]


def _garbage(path: Path, n: int = 4096) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


_CKPT: dict[str, Path] = {}  # filled by the module fixture: checkpoints of real runs


def with_ckpt(kind: str, *extra: str, command: str = "fit", model: str = "fcn_e2abl", transform=None):
    def prepare(tmp: Path) -> list[str]:
        path = _CKPT[kind]
        if transform is not None:
            path = transform(tmp, path)
        return [*gunpoint(model, command), f"--ckpt_path={path}", *extra]

    return prepare


def _truncate(tmp: Path, path: Path) -> Path:
    out = tmp / "truncated.ckpt"
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def _bare_state_dict(tmp: Path, path: Path) -> Path:
    out = tmp / "weights.ckpt"
    torch.save(torch.load(path, weights_only=True)["state_dict"], out)
    return out


def _tensor_file(tmp: Path, path: Path) -> Path:
    out = tmp / "tensor.ckpt"
    torch.save(torch.zeros(3), out)
    return out


def _run_dir_exists(tmp: Path) -> list[str]:
    run = tmp / "logs" / "lightning_logs" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,step\n")
    return [*gunpoint(), "--trainer.logger.init_args.version=0"]


@dataclass
class Case:
    id: str
    prepare: Callable[[Path], list[str]]
    match: str
    tool: Callable[[list[str]], None] = main
    prefix: str = "e2abl: error: "


CLI_CASES = [
    # poisoning settings
    Case("poison_rate_negative", args("--data.init_args.poison_rate=-0.1"), r"poison_rate=-0.1 must be strictly between 0 and 1"),
    Case("poison_rate_zero", args("--data.init_args.poison_rate=0"), r"poison_rate=0(\.0)? must be strictly between 0 and 1"),
    Case("poison_rate_above_one", args("--data.init_args.poison_rate=1.5"), r"poison_rate=1.5 must be strictly between"),
    Case("poison_rate_not_a_number", args("--data.init_args.poison_rate=high"), r"poison_rate.*high"),
    Case("poison_rate_poisons_none", args("--data.init_args.poison_rate=0.001"), r"poison_rate=0.001 of 45 training samples poisons none"),
    Case("poison_rate_too_many", args("--data.init_args.poison_rate=0.9"), r"poison_rate=0.9 asks for \d+ poisoned samples.*lower poison_rate"),
    Case("target_label_too_large", args("--data.init_args.target_label=5"), r"target_label=5 is outside the 2 classes"),
    Case("target_label_negative", args("--data.init_args.target_label=-1"), r"target_label=-1 is outside the 2 classes"),
    Case("attack_mode_unknown", args("--data.init_args.attack_mode=all_to_some"), r"attack_mode.*all_to_some"),
    Case("val_fraction_too_large", args("--data.init_args.val_fraction=0.7"), r"val_fraction=0.7 must be in \[0, 0.5\)"),
    Case("val_fraction_negative", args("--data.init_args.val_fraction=-0.1"), r"val_fraction=-0.1 must be in"),
    Case("batch_size_zero", args("--data.init_args.batch_size=0"), r"batch_size=0 .*must be >= 1"),
    Case("eval_batch_size_zero", args("--data.init_args.eval_batch_size=0"), r"eval_batch_size=0 must be >= 1"),
    Case("batch_size_not_a_number", args("--data.init_args.batch_size=abc"), r"batch_size.*abc"),
    Case("train_size_zero", args("--data.init_args.train_size=0"), r"train_size=0 must be at least 2"),
    Case("train_size_too_large", args("--data.init_args.train_size=1000"), r"train_size=1000 is not below the 45 training samples"),
    Case("num_workers_negative", args("--data.init_args.num_workers=-1"), r"num_workers=-1 must be >= 0"),
    Case("trigger_fraction", args("--data.init_args.trigger.init_args.fraction=2.0"), r"fraction=2.0 must be in \(0, 1\]"),
    Case("trigger_not_a_trigger", args("--data.init_args.trigger=torch.nn.Linear"), r"torch.nn.Linear does not correspond to a subclass of Trigger"),
    Case("trigger_unknown", args("--data.init_args.trigger=NotATrigger"), r"NotATrigger"),
    # data files and availability
    Case("dataset_unknown", args("--data.init_args.dataset=GunPiont"), r"dataset='GunPiont' is not a UCR/UEA dataset; bundled offline: .*GunPoint"),
    Case("dataset_not_offline", lambda t: [*gunpoint(), "--data.init_args.dataset=ECG5000", f"--data.init_args.cache_dir={t / 'cache'}"], r"dataset 'ECG5000' is not cached .*data_dir=<folder>"),
    Case("data_dir_without_files", lambda t: [*gunpoint(), f"--data.init_args.data_dir={t}"], r"data_dir='.*' has no GunPoint_TRAIN/GunPoint_TEST"),
    Case("data_dir_is_a_file", lambda t: [*gunpoint(), f"--data.init_args.data_dir={_garbage(t / 'data.bin')}"], r"data_dir='.*data\.bin' is a file, not a folder"),
    Case("ucr_test_file_missing", ucr(lambda: _good_rows(40), lambda: None), r"Toy_TRAIN\.tsv has no partner Toy_TEST\.tsv"),
    Case("ucr_train_file_missing", ucr(lambda: None), r"Toy_TEST\.tsv has no partner Toy_TRAIN\.tsv"),
    Case("ucr_nan_inside_series", ucr(lambda: _with(_good_rows(40), 6, _row("a", [*_series(6)[:5], "NaN", *_series(6)[6:]]))), r"Toy_TRAIN\.tsv: line 7 \(sample 6\), channel 0, value 6 is 'NaN': NaN/inf inside a series"),
    Case("ucr_inf_value", ucr(lambda: _with(_good_rows(40), 3, _row("b", [*_series(3)[:2], "inf", *_series(3)[3:]]))), r"Toy_TRAIN\.tsv: line 4 \(sample 3\), channel 0, value 3 is 'inf'"),
    Case("ucr_nan_in_test_file", ucr(lambda: _good_rows(40), lambda: _with(_good_rows(10), 2, _row("a", ["NaN", *_series(2)[1:]]))), r"Toy_TEST\.tsv: line 3 \(sample 2\), channel 0, value 1 is 'NaN'"),
    Case("ucr_ragged_rows", ucr(lambda: _with(_good_rows(40), 9, _row("b", _series(9)[:20]))), r"Toy_TRAIN\.tsv: line 10 has 21 columns but line 1 has 25"),
    Case("ucr_non_numeric_value", ucr(lambda: _with(_good_rows(40), 4, _row("a", [*_series(4)[:3], "2x", *_series(4)[4:]]))), r"Toy_TRAIN\.tsv: line 5 \(sample 4\), channel 0, value 4 is '2x', not a number"),
    Case("ucr_empty_train_file", ucr(lambda: []), r"Toy_TRAIN\.tsv holds no series"),
    Case("ucr_one_class", ucr(lambda: _good_rows(40, labels=("a",)), lambda: _good_rows(10, labels=("a",))), r"Toy: the training split holds 1 class\(es\) \(a\); a classifier needs at least 2"),
    Case("ucr_test_label_unseen", ucr(lambda: _good_rows(40), lambda: _good_rows(10, labels=("a", "c"))), r"Toy: test labels \['c'\] never appear in the training split"),
    Case("ucr_empty_row", ucr(lambda: _with(_good_rows(40), 2, "a")), r"line 3 has 1 columns but line 1 has 25"),
    # model arguments
    Case("policy_alpha_above_one", args("--model.init_args.policy.alpha=1.5"), r"alpha=1.5 must be in \(0, 1\), e.g. 0.2"),
    Case("policy_alpha_zero", args("--model.init_args.policy.alpha=0"), r"alpha=0(\.0)? must be in \(0, 1\), e.g. 0.2"),
    Case("policy_alpha_not_a_number", args("--model.init_args.policy.alpha=low"), r"policy.alpha \(IsolationPolicy\): Expected a float. Got value: low"),
    Case("policy_min_share_one", args("--model.init_args.policy.min_share=1.0"), r"min_share=1.0 must be in \(0, 1\), e.g. 0.05"),
    Case("policy_min_share_negative", args("--model.init_args.policy.min_share=-0.1"), r"min_share=-0.1 must be in \(0, 1\)"),
    Case("policy_warmup_epochs_zero", args("--model.init_args.policy.warmup_epochs=0"), r"warmup_epochs=0 must be at least 1"),
    Case("policy_unknown_key", args("--model.init_args.policy.isolation_ratio=0.2"), r"policy \(IsolationPolicy\): Option 'isolation_ratio' is not accepted"),
    # knobs of the old isolation policy are gone: the error names the key the user gave
    Case("removed_isolation_ratio", args("--model.init_args.isolation_ratio=0.2"), r"model \(E2ABL\): Option 'isolation_ratio' is not accepted"),
    Case("moved_warmup_epochs", args("--model.init_args.warmup_epochs=2"), r"model \(E2ABL\): Option 'warmup_epochs' is not accepted"),
    Case("removed_target_patience", args("--model.init_args.target_patience=1"), r"model \(E2ABL\): Option 'target_patience' is not accepted"),
    Case("removed_ascent_weight", args("--model.init_args.ascent_weight=1"), r"model \(E2ABL\): Option 'ascent_weight' is not accepted"),
    Case("removed_head_selection", args("--model.init_args.head_selection=auto"), r"model \(E2ABL\): Option 'head_selection' is not accepted"),
    Case("shallow_layer_unknown", args("--model.init_args.shallow_layer=net.nope"), r"shallow_layer='net.nope' is not a submodule of FCN"),
    Case("model_unknown", args("--model=NotAModel"), r"model: .*NotAModel"),
    Case("backbone_unknown", args("--model.init_args.backbone=NotABackbone"), r"backbone.*NotABackbone"),
    Case("learning_rate_negative", args("--model.init_args.optimizer.init_args.lr=-1"), r"Invalid learning rate: -1"),
    Case("abl_isolation_loss", args("--model.init_args.isolation_loss=huber", model="fcn_abl"), r"isolation_loss.*huber"),
    Case("abl_lga_gamma", args("--model.init_args.lga_gamma=0", model="fcn_abl"), r"lga_gamma=0(\.0)? must be positive"),
    Case("abl_isolation_ratio", args("--model.init_args.isolation_ratio=1.0", model="fcn_abl"), r"isolation_ratio=1.0 must be in \(0, 1\)"),
    # trainer and command line
    Case("max_epochs_not_a_number", args("--trainer.max_epochs=abc"), r"max_epochs.*abc"),
    Case("precision_unknown", args("--trainer.precision=fp8"), r"trainer.precision.*'fp8'"),
    Case("devices_zero", args("--trainer.devices=0"), r"devices='0'\)` value is not a valid input"),
    Case("accelerator_missing", args("--trainer.accelerator=tpu"), r"torch_xla"),
    Case("limit_train_batches_negative", args("--trainer.limit_train_batches=-1"), r"invalid value -1 for limit_train_batches"),
    Case("seed_not_a_number", args("--seed_everything=abc"), r"seed_everything.*'abc'"),
    Case("unknown_flag", args("--trainer.not_a_trainer_key=3"), r"unrecognized arguments: --trainer.not_a_trainer_key=3"),
    Case("unknown_data_key", args("--data.init_args.poison_ratio=0.2"), r"Option 'poison_ratio' is not accepted"),
    Case("unknown_subcommand", lambda t: ["fitt"], r"invalid choice: 'fitt'"),
    Case("no_subcommand", lambda t: [], r"choose a subcommand"),
    Case("config_missing", lambda t: ["fit", "--config", str(t / "missing.yaml")], r"missing\.yaml"),
    Case("config_not_yaml", lambda t: ["fit", "--config", str(_write(t / "bad.yaml", "a: [\n"))], r"Problems parsing config"),
    Case("config_unknown_key", lambda t: [*gunpoint(), "--config", str(_write(t / "typo.yaml", "data:\n  init_args:\n    poison_ratio: 0.2\n"))], r"poison_ratio"),
    # checkpoints and run directories
    Case("ckpt_missing", lambda t: [*gunpoint(), f"--ckpt_path={t / 'none.ckpt'}"], r"ckpt_path='.*none\.ckpt' does not exist"),
    Case("ckpt_garbage", lambda t: [*gunpoint(), f"--ckpt_path={_garbage(t / 'x.ckpt')}"], r"ckpt_path='.*x\.ckpt' is not a PyTorch checkpoint"),
    Case("ckpt_directory", lambda t: [*gunpoint(), f"--ckpt_path={t}"], r"ckpt_path='.*' is a directory, not a checkpoint file"),
    Case("ckpt_truncated", with_ckpt("e2abl", transform=_truncate), r"truncated\.ckpt' is not a PyTorch checkpoint"),
    Case("ckpt_bare_state_dict", with_ckpt("e2abl", transform=_bare_state_dict), r"weights\.ckpt' is not a Lightning checkpoint: it holds a dict without 'state_dict'"),
    Case("ckpt_a_tensor", with_ckpt("e2abl", transform=_tensor_file), r"tensor\.ckpt' is not a Lightning checkpoint: it holds a Tensor"),
    Case("ckpt_other_model_class", with_ckpt("no_defense"), r"is a checkpoint of another model: NoDefense, but this command's model is E2ABL"),
    Case("ckpt_other_backbone_size", with_ckpt("e2abl", "--model.init_args.backbone.init_args.layers=[16,32,16]"), r"holds net\..* of shape \(\d+, \d+, \d+\) but this E2ABL has \(16, 1, \d+\): it was trained with another backbone"),
    Case("ckpt_other_model_class_test", with_ckpt("no_defense", command="test"), r"is a checkpoint of another model"),
    Case("ckpt_other_dataset_shape", with_ckpt("e2abl", "--data.init_args.dataset=ArrowHead"), r"was trained on inputs of shape \(1, 150\) with 2 classes, but this data gives \(1, 251\) with 3"),
    Case("ckpt_other_poison_seed", with_ckpt("e2abl", "--data.init_args.poison_seed=1"), r"was trained on another poisoned training set \(poison_seed=0 there, 1 now"),
    Case("ckpt_other_split", with_ckpt("e2abl", "--data.init_args.val_fraction=0.2"), r"another poisoned training set \(num_train=45 there, 40 now"),
    Case("ckpt_other_trigger", with_ckpt("e2abl", "--data.init_args.trigger.init_args.fraction=0.1"), r"the same settings but other training data"),
    Case("ckpt_garbage_test", lambda t: [*gunpoint(command="test"), f"--ckpt_path={_garbage(t / 'y.ckpt')}"], r"y\.ckpt' is not a PyTorch checkpoint"),
    Case("ckpt_missing_validate", lambda t: [*gunpoint(command="validate"), f"--ckpt_path={t / 'none.ckpt'}"], r"none\.ckpt' does not exist"),
    Case("run_directory_exists", _run_dir_exists, r"the run directory .*version_0 already holds an earlier run's files"),
    # the other tools
    Case("gallery_dataset_unknown", lambda t: ["--dataset", "imagenet"], r"--dataset: invalid choice: 'imagenet'", gallery_main, "e2abl-gallery: error: "),
    Case("gallery_out_directory", lambda t: ["--out", str(t)], r"--out '.*' must be a \.png file path", gallery_main, "e2abl-gallery: error: "),
    Case("gallery_attack_unknown", lambda t: ["--attacks", "Nope"], r"unknown attacks \['Nope'\]", gallery_main, "e2abl-gallery: error: "),
    Case("gallery_data_missing", lambda t: ["--dataset", "cifar10", "--root", str(t / "data"), "--out", str(t / "g.png")], r"CIFAR10 was not found under .*pass --download", gallery_main, "e2abl-gallery: error: "),
    Case("gallery_index_negative", lambda t: ["--index", "-1", "--out", str(t / "g.png")], r"--index -1 must be >= 0", gallery_main, "e2abl-gallery: error: "),
    Case("bench_out_is_a_file", lambda t: ["--suite", "demo", "--out", str(_write(t / "results.txt", "x"))], r"--out '.*results\.txt' is a file", bench_main, "e2abl-bench: error: "),
    Case("bench_suite_unknown", lambda t: ["--suite", "nope", "--out", str(t / "out")], r"suite 'nope' not found", bench_main, "e2abl-bench: error: "),
    Case("bench_shard", lambda t: ["--suite", "demo", "--out", str(t / "out"), "--shard", "3/2"], r"--shard='3/2' must be I/N", bench_main, "e2abl-bench: error: "),
]  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _cli_fit(root: Path, model: str) -> Path:
    """``last.ckpt`` of a one-epoch CLI fit on GunPoint (the shipped configs)."""
    out = root / model
    main(
        [
            *gunpoint(model),
            f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=0",
        ]
    )
    return next(out.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli_ckpts")
    _CKPT.update(e2abl=_cli_fit(root, "fcn_e2abl"), no_defense=_cli_fit(root, "fcn_no_defense"))
    torch.set_num_threads(threads)
    return _CKPT


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_2(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, checkpoints
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a relative run directory would show up below
    monkeypatch.delenv("E2ABL_DEBUG", raising=False)
    argv = case.prepare(work)
    before = _files(work)
    with pytest.raises(SystemExit) as exit_info:
        case.tool(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith(case.prefix)]
    assert len(errors) == 1, err
    assert re.search(case.match, errors[0]), errors[0]
    assert _files(work) == before, "a failed command left files behind"


def test_catalogue_holds_every_kind_of_case() -> None:
    assert len(CLI_CASES) + len(API_CASES) >= 80
    assert len({c.id for c in CLI_CASES + API_CASES}) == len(CLI_CASES) + len(API_CASES)


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"poison_rate=-0.1"):
        main([*gunpoint(), "--data.init_args.poison_rate=-0.1", "--debug"])
    monkeypatch.setenv("E2ABL_DEBUG", "1")
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \(0, 1\)"):
        main([*gunpoint(), "--model.init_args.policy.alpha=1.5"])
    assert not (tmp_path / "logs").exists()


def test_a_run_that_fails_after_training_starts_removes_its_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The batch-contract check raises in the first training step, after Lightning made the run directory."""
    monkeypatch.chdir(tmp_path)
    from e2abl_lightning.data import poison

    def refuse(batch: object, num_classes: int) -> None:
        raise ValueError("refused on purpose")

    monkeypatch.setattr("e2abl_lightning.models.e2abl.lightning_model.check_training_batch", refuse)
    assert poison.check_training_batch is not refuse
    with pytest.raises(SystemExit) as exit_info:
        main(gunpoint())
    assert exit_info.value.code == 2
    assert "e2abl: error: refused on purpose" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


# ---- the Python API ------------------------------------------------------------------------------------
def _gunpoint(**kwargs) -> Callable[[], object]:
    return functools.partial(UCRDataModule, "GunPoint", StaticPattern(), download=False, **kwargs)


def _fit_batches(items: list[dict] | TensorDataset, num_classes: int = 2) -> None:
    model = E2ABL(SMALL_FCN, num_classes, (1, 16), policy=IsolationPolicy(warmup_epochs=1))
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(items, batch_size=4))


def _items(**overrides) -> list[dict]:
    items = [{"input": torch.randn(1, 16), "target": torch.tensor(i % 2), "index": i} for i in range(8)]
    for item in items:
        for key, value in overrides.items():
            if value is None:
                item.pop(key)
            else:
                item[key] = value(item)
    return items


@dataclass
class ApiCase:
    id: str
    call: Callable[[], object]
    error: type[BaseException]
    match: str
    inputs: Callable[[Path], object] | None = None  # writes the case's input files first


def _image_folder(tmp: Path, corrupt: bool = False, test: bool = True) -> Path:
    from PIL import Image

    root = tmp / "images"
    for split in ("train", "test") if test else ("train",):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    if corrupt:
        _garbage(root / "train" / "dog" / "1.png", 64)
    return root


def _folder_dm() -> Callable[[], object]:
    from e2abl_lightning.data.datamodules import ImageFolderDataModule
    from e2abl_lightning.data.triggers.image import BadNets

    def call() -> object:
        return ImageFolderDataModule(BadNets(), str(Path.cwd() / "images"), image_size=(8, 8)).num_classes

    return call


def _ts_files(body: str) -> Callable[[Path], object]:
    def write(tmp: Path) -> None:
        folder = tmp / "ts"
        folder.mkdir()
        header = "@problemName Toy\n@univariate true\n@equalLength true\n@classLabel true a b\n@data\n"
        (folder / "Toy_TRAIN.ts").write_text(header + body)
        (folder / "Toy_TEST.ts").write_text(header + "1,2,3,4:a\n4,3,2,1:b\n")

    return write


def _ts_dm() -> object:
    return UCRDataModule("Toy", StaticPattern(), data_dir=str(Path.cwd() / "ts")).num_classes


API_CASES = [
    ApiCase("poison_rate_string", _gunpoint(poison_rate="0.1"), TypeError, r"poison_rate='0.1' must be a number, e.g. 0.1, not str"),
    ApiCase("target_label_string", _gunpoint(target_label="0"), TypeError, r"target_label='0' must be an integer, not str"),
    ApiCase("batch_size_float", _gunpoint(batch_size=2.5), TypeError, r"batch_size=2.5 must be an integer, not float"),
    ApiCase("val_fraction_string", _gunpoint(val_fraction="0.1"), TypeError, r"val_fraction='0.1' must be a number"),
    ApiCase("drop_last_string", _gunpoint(drop_last="yes"), TypeError, r"drop_last='yes' must be True or False"),
    ApiCase("train_size_float", _gunpoint(train_size=20.5), TypeError, r"train_size=20.5 must be an integer or None"),
    ApiCase("image_folder_corrupt_image", _folder_dm(), ValueError, r"train/dog/1\.png cannot be read as an image .*remove or replace it", functools.partial(_image_folder, corrupt=True)),
    ApiCase("image_folder_without_test", _folder_dm(), FileNotFoundError, r"images/test is missing: put images at", functools.partial(_image_folder, test=False)),
    ApiCase("ts_nan_padding_not_declared", _ts_dm, ValueError, r"Toy_TRAIN\.ts: line 7 \(sample 1\), channel 0, value 3 is 'NaN'", _ts_files("1,2,3,4:a\n1,2,NaN,NaN:b\n")),
    ApiCase("ts_row_without_label", _ts_dm, ValueError, r"Toy_TRAIN\.ts: line 7 has no ':' before its label", _ts_files("1,2,3,4:a\n1,2,3,4\n")),
    ApiCase("batch_without_index", lambda: _fit_batches(_items(index=None)), ValueError, r"the training batch lacks \['index'\] \(it has \['input', 'target'\]\)"),
    ApiCase("batch_float_targets", lambda: _fit_batches(_items(target=lambda item: item["target"].float())), TypeError, r"batch\['target'\] holds torch.float32 .*integer class labels 0..1"),
    ApiCase("batch_one_hot_targets", lambda: _fit_batches(_items(target=lambda item: torch.nn.functional.one_hot(item["target"], 2))), TypeError, r"batch\['target'\] holds torch.int64 of shape \(4, 2\)"),
    ApiCase("batch_label_too_large", lambda: _fit_batches(_items(target=lambda item: item["target"] + 4)), ValueError, r"batch\['target'\] holds label 5, outside the model's 2 classes"),
    ApiCase("batch_a_tuple", lambda: _fit_batches(TensorDataset(torch.randn(8, 1, 16), torch.arange(8) % 2)), TypeError, r"a training batch is a list; E2ABL needs dicts with 'input', 'target' and 'index'"),
]  # fmt: skip


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_python_api_bad_input_names_the_argument(case: ApiCase, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    if case.inputs is not None:
        case.inputs(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(case.error, match=case.match):
        case.call()
    assert _files(tmp_path) == before, "partial output left behind"
