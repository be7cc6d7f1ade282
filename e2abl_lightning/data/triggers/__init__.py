"""Backdoor triggers: pure, deterministic, no Lightning."""

from e2abl_lightning.data.triggers.base import Trigger
from e2abl_lightning.data.triggers.image import (
    BPP,
    SIG,
    BadNets,
    Blend,
    FTrojan,
    InputAware,
    LabelConsistent,
    Trojan,
    WaNet,
)
from e2abl_lightning.data.triggers.timeseries import PowerlineNoise, StaticPattern

__all__ = [
    "BPP",
    "SIG",
    "BadNets",
    "Blend",
    "FTrojan",
    "InputAware",
    "LabelConsistent",
    "PowerlineNoise",
    "StaticPattern",
    "Trigger",
    "Trojan",
    "WaNet",
]
