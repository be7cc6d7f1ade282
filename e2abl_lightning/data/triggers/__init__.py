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
from e2abl_lightning.data.triggers.timeseries import (
    TSBA,
    FrequencyTrigger,
    NoiseBlend,
    PowerlineNoise,
    StaticPattern,
    TimeWarp,
)

__all__ = [
    "BPP",
    "SIG",
    "TSBA",
    "BadNets",
    "Blend",
    "FTrojan",
    "FrequencyTrigger",
    "InputAware",
    "LabelConsistent",
    "NoiseBlend",
    "PowerlineNoise",
    "StaticPattern",
    "TimeWarp",
    "Trigger",
    "Trojan",
    "WaNet",
]
