"""Learning-rate schedules that follow the run's length."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR


class CosineAnnealingToEnd(CosineAnnealingLR):
    """Cosine annealing whose minimum falls on the run's last epoch.

    ``T_max=None`` (the default, and what the shipped configs use) takes ``trainer.max_epochs`` when the
    LightningModule configures its optimisers, so ``--trainer.max_epochs 60`` anneals over 60 epochs
    instead of climbing back up after a hard-coded 40. An explicit ``T_max`` is kept.

    Args:
        optimizer: the optimiser.
        T_max: epochs to the minimum; None for the trainer's ``max_epochs``.
        eta_min: the minimum learning rate.
        last_epoch: the index of the last epoch (-1 to start).
    """

    def __init__(self, optimizer: Optimizer, T_max: int | None = None, eta_min: float = 0.0, last_epoch: int = -1):
        if T_max is not None and T_max < 1:
            raise ValueError(f"T_max={T_max} must be at least 1, or None for trainer.max_epochs")
        self.follows_run = T_max is None
        super().__init__(optimizer, T_max=T_max or 1, eta_min=eta_min, last_epoch=last_epoch)

    def set_run_length(self, max_epochs: int | None) -> None:
        """Anneal over ``max_epochs`` epochs (called by the LightningModule with ``trainer.max_epochs``)."""
        if not self.follows_run:
            return
        if max_epochs is None or max_epochs < 1:
            raise ValueError(
                f"CosineAnnealingToEnd needs trainer.max_epochs (got {max_epochs}); set max_epochs or give T_max"
            )
        self.T_max = int(max_epochs)
