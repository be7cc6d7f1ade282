"""E2ABLCLI: the LightningCLI behind ``e2abl`` (imported only when a command runs; see ``cli.py``).

Besides the links and callbacks, it checks a command before anything is written (the data's
poisoning, a ``ckpt_path`` against the model and data, the run directory), warns when a command
would do nothing useful, removes the run directory of a command that fails before its first
checkpoint, and ends ``fit`` with a short summary and ``test``/``validate`` with each metric once.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from e2abl_lightning.callbacks import BackdoorEvalCallback, IsolationMonitor, TriggerGallery
from e2abl_lightning.cli import check_checkpoint
from e2abl_lightning.data.datamodules import BackdoorDataModule
from e2abl_lightning.models.base import BackdoorClassifier
from e2abl_lightning.models.e2abl.policy import DIP_PER_SHARE, PERSISTENCE, blind_spot, can_isolate


class E2ABLWarning(UserWarning):
    """A command that runs but will not do what the user probably wants."""


class E2ABLCLI(LightningCLI):
    """LightningCLI with the evaluation and media callbacks and the datamodule -> model/callback links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(BackdoorEvalCallback, "eval")
        parser.add_lightning_class_args(TriggerGallery, "gallery")
        parser.add_lightning_class_args(IsolationMonitor, "isolation_monitor")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "eval.num_classes", apply_on="instantiate")
        parser.link_arguments("data.init_args.target_label", "eval.target_label")
        # a rich progress bar (CA/ASR in it) unless the config sets trainer.callbacks or disables the bar
        parser.set_defaults({"trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.RichProgressBar"}]})

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:  # before LightningCLI reads the checkpoint's hyperparameters and any run directory is made
            path = self.config[subcommand].get("ckpt_path")
            check_checkpoint(path)
            if path is not None and Path(str(path)).expanduser().is_file():
                model = self.config[subcommand].get("model")
                check_checkpoint_class(Path(str(path)).expanduser(), model.get("class_path") if model else None)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        trainer = config.get("trainer")
        if trainer is not None and trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            bars = ("RichProgressBar", "TQDMProgressBar")  # the default bar must not clash with a disabled bar
            trainer.callbacks = [c for c in trainer.callbacks if _class_name(c) not in bars]
        _name_wandb_loggers(config)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        loggers = self.trainer.loggers if getattr(self, "trainer", None) is not None else []
        if any(isinstance(logger, WandbLogger) for logger in loggers):
            config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
            full = yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False, skip_check=True))
            for logger in loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_hyperparams({"cli": full})  # the whole parsed config, under config.cli

    # ---- before a command: everything the user can get wrong, checked before any file is written ----
    def _run_subcommand(self, subcommand: str) -> None:
        fresh = [p for p in map(_first_missing, _output_dirs(self.trainer)) if p is not None]
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            for path in dict.fromkeys(fresh):  # made by this failed command and holding no checkpoint
                if path.is_dir() and not any(path.rglob("*.ckpt")):
                    shutil.rmtree(path, ignore_errors=True)
            raise

    def _check_command(self, subcommand: str) -> None:
        ckpt_path = self.config_init[subcommand].get("ckpt_path")
        self.datamodule.setup("fit")  # poisoning errors now, not after the run directory exists
        if ckpt_path is not None and Path(str(ckpt_path)).expanduser().is_file():
            check_resume(Path(str(ckpt_path)).expanduser(), self.model, self.datamodule, resume=subcommand == "fit")
        elif subcommand in ("test", "validate", "predict") and ckpt_path is None:
            _warn(
                f"`e2abl {subcommand}` without --ckpt_path runs a freshly initialised, untrained model: its scores "
                "mean nothing; pass --ckpt_path <run>/checkpoints/last.ckpt"
            )

    def before_fit(self) -> None:
        self._check_command("fit")
        trainer = self.trainer
        if trainer.logger is not None and isinstance(trainer.logger, (CSVLogger, TensorBoardLogger)):
            run = Path(trainer.logger.log_dir)
            if run.is_dir() and any(run.iterdir()):
                raise ValueError(
                    f"the run directory {run} already holds an earlier run's files; a fit never writes into them: "
                    "leave trainer.logger's version unset (a new version_N) or give another name/version"
                )
        if trainer.limit_train_batches == 0:
            _warn("trainer.limit_train_batches=0: no training step runs; remove it or give a share above 0")
        policy = getattr(self.model, "policy", None)
        need = getattr(policy, "epochs_to_act", None)
        if need is not None and trainer.max_epochs is not None and 0 <= trainer.max_epochs < need:
            _warn(
                f"trainer.max_epochs={trainer.max_epochs} is too few for E2ABL to act: it needs at least "
                f"policy.warmup_epochs + 2 = {need} (warm-up, two passing decisions, one cleansing epoch), so "
                "this run shows the model without the defense; raise max_epochs or lower policy.warmup_epochs"
            )

    def before_validate(self) -> None:
        self._check_command("validate")
        self.config_init["validate"]["verbose"] = False  # after_validate prints each metric once

    def before_test(self) -> None:
        self._check_command("test")
        self.config_init["test"]["verbose"] = False  # after_test prints each metric once

    def before_predict(self) -> None:
        self._check_command("predict")

    # ---- after a command: what it did ----------------------------------------------------------
    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, self.model, self.datamodule))

    def after_validate(self) -> None:
        if self.trainer.is_global_zero:
            print(metric_lines(self.trainer, "val"))

    def after_test(self) -> None:
        if self.trainer.is_global_zero:
            print(metric_lines(self.trainer, "test"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True`` (no pickled code runs), or one clear error."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a zip that torch cannot read (not written by torch.save)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"ckpt_path='{path}' cannot be read as a checkpoint ({reason[:160]}); pass the last.ckpt of an earlier run"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        what = (
            "a dict without 'state_dict' (a bare state_dict?)"
            if isinstance(checkpoint, dict)
            else "a " + (type(checkpoint).__name__)
        )
        raise ValueError(
            f"ckpt_path='{path}' is not a Lightning checkpoint: it holds {what}; pass a .ckpt written by "
            "`e2abl fit` (<run>/checkpoints/last.ckpt)"
        )
    return checkpoint


def check_checkpoint_class(path: Path, class_path: str | None) -> None:
    """Refuse a checkpoint of another LightningModule class than the command's model (LightningCLI would
    otherwise silently swap the configured model for the checkpoint's class)."""
    saved = str((load_checkpoint(path).get("hyper_parameters") or {}).get("_class_path") or "").rsplit(".", 1)[-1]
    wanted = str(class_path or "").rsplit(".", 1)[-1]
    if saved and wanted and saved != wanted:
        raise ValueError(
            f"ckpt_path='{path}' is a checkpoint of another model: {saved}, but this command's model is {wanted}; "
            "pass a checkpoint of the same model, or that model's config"
        )


def check_resume(path: Path, model: Any, datamodule: Any, resume: bool) -> None:
    """Refuse, with one line, a checkpoint of another model class, data shape or (``resume``) poisoned set.

    Reads the file with ``weights_only=True`` (no pickled code runs) before any run directory exists.
    """
    checkpoint = load_checkpoint(path)
    name = type(model).__name__
    saved, expected = checkpoint["state_dict"], dict(model.named_parameters())
    missing = [k for k in expected if k not in saved]
    if missing:
        other = [k for k in saved if k not in model.state_dict()]
        example = f" and holds others (e.g. {other[0]})" if other else ""
        raise ValueError(
            f"ckpt_path='{path}' is a checkpoint of another model: it lacks {len(missing)} of {name}'s weights "
            f"(e.g. {missing[0]}){example}; pass a checkpoint of the same model and backbone, or leave out ckpt_path"
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    now = {"num_classes": int(model.num_classes), "input_shape": tuple(model.input_shape)}
    then = {k: hparams.get(k) for k in now}
    then["input_shape"] = tuple(then["input_shape"]) if then["input_shape"] is not None else None
    if any(then[k] is not None and then[k] != now[k] for k in now):
        raise ValueError(
            f"ckpt_path='{path}' was trained on inputs of shape {then['input_shape']} with {then['num_classes']} "
            f"classes, but this data gives {now['input_shape']} with {now['num_classes']}: pass a checkpoint of a "
            "run on this dataset"
        )
    for key, value in expected.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise ValueError(
                f"ckpt_path='{path}' holds {key} of shape {tuple(saved[key].shape)} but this {name} has "
                f"{tuple(value.shape)}: it was trained with another backbone or data shape; pass a matching checkpoint"
            )
    state = checkpoint.get(type(datamodule).__qualname__)
    if resume and isinstance(state, dict) and hasattr(datamodule, "check_resume_state"):
        datamodule.check_resume_state(state, source=f"ckpt_path='{path}'")


# ---- what a run tells the user --------------------------------------------------------------------
def fit_summary(trainer: Any, model: Any, datamodule: Any) -> str:
    """A few lines after ``fit``: validation CA/ASR, what E2ABL suspected, where the run is."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    lines = [f"e2abl fit: {trainer.current_epoch} epochs, {trainer.global_step} steps"]
    named = (("val/clean_acc", "clean accuracy"), ("val/asr", "ASR"))
    scores = [f"{label} {100 * metrics[key]:.1f}%" for key, label in named if key in metrics]
    if scores:
        lines.append("  validation: " + ", ".join(scores))
    state = getattr(model, "state", None)
    if state is not None and hasattr(state, "suspected_target") and hasattr(state, "isolated"):
        target = int(state.suspected_target)
        isolated = int(state.isolated.sum())
        classes = getattr(getattr(datamodule, "raw", None), "classes", None) or []
        share, k = float(getattr(state, "detectable", 0.0)), int(state.pred_ema.shape[1])
        if target >= 0:
            label = f" ({classes[target]!r})" if target < len(classes) else ""
            lines.append(f"  E2ABL suspected target class {target}{label}, {isolated} training samples isolated")
        elif share == 0 or can_isolate(share, k):  # where it cannot isolate, the line below says why
            lines.append("  E2ABL suspected no target class (no backdoor found, or the run was too short)")
        message = blind_spot(share, k) if share > 0 else None
        if message is not None:
            lines.append(f"  {message}")
        lines += _confusion_lines(_run_dir(trainer), getattr(model, "policy", None))
    isolated = getattr(model, "isolated", None)
    if state is None and isolated is not None and hasattr(isolated, "sum"):
        lines.append(f"  {type(model).__name__} isolated {int(isolated.sum())} training samples")
    run = _run_dir(trainer)
    if run is not None:
        extra = "".join(f", {name}" for name in ("suspects.csv", "decisions.csv") if (run / name).is_file())
        lines.append(f"  run directory: {run} (metrics.csv, checkpoints{extra}; `e2abl-report {run}` plots it)")
    return "\n".join(lines)


def _confusion_lines(run: Path | None, policy: Any) -> list[str]:
    """A line per class that showed two populations in at least ``PERSISTENCE`` epochs which the policy read
    as confusion and never acted on: the one reading a human should check (``decisions.csv``)."""
    if run is None or policy is None or not (run / "decisions.csv").is_file():
        return []
    from e2abl_lightning.report import confusion_epochs

    counts = confusion_epochs(run / "decisions.csv", policy.alpha, policy.min_share / DIP_PER_SHARE)
    return [
        f"  class {c} held two populations in {n} epochs that E2ABL read as label confusion (the worse-fitted "
        "side mostly predicted as other classes) and did not act on; if it may be a target, see decisions.csv"
        for c, n in counts.items()
        if n >= PERSISTENCE
    ]


def metric_lines(trainer: Any, prefix: str) -> str:
    """Each ``<prefix>/*`` metric once (Lightning's table repeats epoch-level metrics per dataloader)."""
    values: dict[str, float] = {}
    for key, value in trainer.callback_metrics.items():
        base = key.split("/dataloader_idx_")[0]
        if base.startswith(f"{prefix}/") and base not in values:
            values[base] = float(value)
    if not values:
        return f"e2abl: no {prefix} metrics were logged"
    width = max(len(k) for k in values)
    split = "validation" if prefix == "val" else "test"
    first = {f"{prefix}/{k}": i for i, k in enumerate(("clean_acc", "asr", "ra"))}  # the evaluation callback's
    ordered = sorted(values, key=lambda k: (first.get(k, len(first)), k))
    return "\n".join([f"{split} metrics:", *(f"  {k:<{width}}  {values[k]:.4f}" for k in ordered)])


# ---- helpers ----------------------------------------------------------------------------------------
def _warn(message: str) -> None:
    warnings.warn(message, E2ABLWarning, stacklevel=2)


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    if issubclass(category, E2ABLWarning):
        return f"e2abl: warning: {message}\n"
    return _default_format(message, category, filename, lineno, line)


_default_format = warnings.formatwarning


class _DropTips(logging.Filter):
    """Lightning's adverts for its cloud products, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in record.getMessage()


def quiet_known_noise() -> None:
    """Silence the messages every run printed that tell the user nothing about their run."""
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule`")
    warnings.formatwarning = _format_warning
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())


def _output_dirs(trainer: Any) -> list[Path]:
    dirs = [Path(trainer.default_root_dir)]
    for logger in trainer.loggers:
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            dirs.append(Path(logger.log_dir))
        elif logger.save_dir is not None:
            dirs.append(Path(logger.save_dir))
    return dirs


def _first_missing(path: Path) -> Path | None:
    """The top-most folder of ``path`` that does not exist yet (what a run would create), or None."""
    path = path.expanduser().absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _run_dir(trainer: Any) -> Path | None:
    for logger in trainer.loggers:
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            return Path(logger.log_dir)
    return None


def _class_name(entry: Any) -> str:
    path = entry.get("class_path", "") if hasattr(entry, "get") else ""
    return str(path).rsplit(".", 1)[-1]


def _name_wandb_loggers(config: Any) -> None:
    """Give each WandbLogger without a run name ``<Model>-<dataset>-<Trigger>``, and those three as tags."""
    trainer = config.get("trainer")
    loggers = trainer.get("logger") if trainer is not None else None
    entries = loggers if isinstance(loggers, list) else [loggers]
    # a later --config replaces the logger list item by item, so an experiment's CSVLogger name lands on
    # the WandbLogger too: such a carried-over name is not a W&B run name the user chose
    carried = {"lightning_logs"} | {
        str((e.get("init_args") or {}).get("name"))
        for e in entries
        if _class_name(e) in ("CSVLogger", "TensorBoardLogger")
    }
    entries = [e for e in entries if _class_name(e) == "WandbLogger"]
    if not entries:
        return
    data_args = config.get("data.init_args") or {}
    dataset = data_args.get("dataset") or _class_name(config.get("data") or {}).removesuffix("DataModule")
    parts = [_class_name(config.get("model") or {}), str(dataset or ""), _class_name(data_args.get("trigger") or {})]
    parts = [p for p in parts if p]
    for entry in entries:
        args = entry.get("init_args")
        if args is None:
            continue
        if not args.get("name") or str(args.get("name")) in carried:
            args.name = "-".join(parts) or None
        args.tags = list(dict.fromkeys([*(args.get("tags") or []), *parts]))


def build_cli(args: ArgsType = None, run: bool = True, exit_on_error: bool = True) -> E2ABLCLI:
    """The CLI over every defense and datamodule (see :func:`e2abl_lightning.cli.make_cli`)."""
    quiet_known_noise()
    return E2ABLCLI(
        BackdoorClassifier,
        BackdoorDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}},
        },
        parser_kwargs={"exit_on_error": exit_on_error},
        args=args,
        run=run,
    )
