"""Backdoor triggers: pure, deterministic, no Lightning."""

from e2abl_lightning.data.triggers.base import Trigger
from e2abl_lightning.data.triggers.timeseries import PowerlineNoise, StaticPattern

__all__ = ["PowerlineNoise", "StaticPattern", "Trigger"]
