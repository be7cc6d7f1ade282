"""The ``e2abl`` command: a LightningCLI over any defense and any backdoor datamodule."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger

from e2abl_lightning.callbacks import BackdoorEvalCallback, IsolationMonitor, TriggerGallery
from e2abl_lightning.data.datamodules import BackdoorDataModule
from e2abl_lightning.models.base import BackdoorClassifier


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
            check_checkpoint(self.config[subcommand].get("ckpt_path"))

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


def check_checkpoint(path: Any) -> None:
    """Raise one clear error for a ``ckpt_path`` that is missing or not a checkpoint (a PyTorch zip file).

    Without it, a corrupted file fails deep inside ``torch.load`` with advice to load it with
    ``weights_only=False``, which would run any pickled code in it. ``"last"``/``"best"``/``"hpc"``
    and URLs are left to Lightning.
    """
    if path is None or str(path) in ("last", "best", "hpc", "registry") or "://" in str(path):
        return
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r} does not exist; pass the last.ckpt of an earlier run")
    if not zipfile.is_zipfile(file):
        raise ValueError(
            f"ckpt_path={str(path)!r} is not a PyTorch checkpoint (not a zip archive): the file is corrupted or "
            "truncated; pass another checkpoint (e.g. the run's last.ckpt) or start without ckpt_path"
        )


def _class_name(entry: Any) -> str:
    path = entry.get("class_path", "") if hasattr(entry, "get") else ""
    return str(path).rsplit(".", 1)[-1]


def _name_wandb_loggers(config: Any) -> None:
    """Give each WandbLogger without a run name ``<Model>-<dataset>-<Trigger>``, and those three as tags."""
    trainer = config.get("trainer")
    loggers = trainer.get("logger") if trainer is not None else None
    entries = loggers if isinstance(loggers, list) else [loggers]
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
        if not args.get("name") or args.get("name") == "lightning_logs":  # CSVLogger's default, carried over
            args.name = "-".join(parts) or None
        args.tags = list(dict.fromkeys([*(args.get("tags") or []), *parts]))


def make_cli(args: ArgsType = None, run: bool = True) -> E2ABLCLI:
    """Build (and by default run) the CLI; ``args`` as a list or dict runs it from Python."""
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
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Entry point of the ``e2abl`` console script."""
    make_cli(args)
    end_process_group()


def end_process_group() -> None:
    """Leave a DDP process group cleanly once the work is done.

    Lightning leaves the group open; gloo's threads can then abort the interpreter at exit
    ("terminate called without an active exception", exit code -6) after a successful run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
