"""Callbacks: they observe and never change the algorithm."""

from e2abl_lightning.callbacks.evaluation import BackdoorEvalCallback
from e2abl_lightning.callbacks.media import IsolationMonitor, MediaSink, TriggerGallery

__all__ = ["BackdoorEvalCallback", "IsolationMonitor", "MediaSink", "TriggerGallery"]
