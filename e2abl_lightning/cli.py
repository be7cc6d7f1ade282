"""The ``e2abl`` command: a LightningCLI over any defense and any backdoor datamodule."""

from __future__ import annotations

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from e2abl_lightning.callbacks import BackdoorEvalCallback
from e2abl_lightning.data.datamodules import BackdoorDataModule
from e2abl_lightning.models.base import BackdoorClassifier


class E2ABLCLI(LightningCLI):
    """LightningCLI with the evaluation callback and the datamodule -> model/callback links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(BackdoorEvalCallback, "eval")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "eval.num_classes", apply_on="instantiate")
        parser.link_arguments("data.init_args.target_label", "eval.target_label")


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


if __name__ == "__main__":
    main()
