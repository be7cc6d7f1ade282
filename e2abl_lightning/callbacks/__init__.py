"""Callbacks: they observe and never change the algorithm."""

from e2abl_lightning.callbacks.evaluation import BackdoorEvalCallback

__all__ = ["BackdoorEvalCallback"]
