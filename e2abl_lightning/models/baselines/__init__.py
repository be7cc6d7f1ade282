"""Baselines: the undefended model and ABL."""

from e2abl_lightning.models.baselines.abl import ABL
from e2abl_lightning.models.baselines.no_defense import NoDefense

__all__ = ["ABL", "NoDefense"]
