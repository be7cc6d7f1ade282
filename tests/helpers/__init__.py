"""Shared test helpers: tiny seeded fits on GunPoint or on constructed data (``from tests.helpers import ...``)."""

from tests.helpers.fits import (
    SMALL_FCN,
    Fit,
    SeparableSeries,
    Spike,
    gunpoint,
    quiet_trainer,
    tiny_e2abl,
    tiny_fit,
)

__all__ = ["SMALL_FCN", "Fit", "SeparableSeries", "Spike", "gunpoint", "quiet_trainer", "tiny_e2abl", "tiny_fit"]
