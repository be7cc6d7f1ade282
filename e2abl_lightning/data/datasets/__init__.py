"""Dataset adapters returning raw tensors."""

from e2abl_lightning.data.datasets.ucr import SeriesSplits, bundled_names, load_ucr

__all__ = ["SeriesSplits", "bundled_names", "load_ucr"]
