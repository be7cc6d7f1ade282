"""e2abl-lightning: train clean classifiers on poisoned data (E2ABL, arXiv 2401.03215)."""

__version__ = "0.2.0"
