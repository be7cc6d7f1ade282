"""The trigger interface shared by image and time-series attacks (no Lightning)."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class Trigger(abc.ABC):
    """A backdoor trigger applied to raw inputs before augmentation and normalisation.

    Lifecycle: the datamodule calls :meth:`setup` once with the raw training set and a generator
    seeded by ``poison_seed`` (fixed patterns and trained generators are built there), then
    :meth:`apply` on the selected training samples and on the poisoned test set. Everything random
    comes from the generators passed in, never from the global RNG.
    """

    #: Whether the attack keeps labels (clean-label attacks such as SIG).
    clean_label: bool = False

    def setup(
        self,
        x: Tensor,
        y: Tensor,
        target_label: int,
        generator: torch.Generator,
        cache_dir: Path | None = None,
    ) -> None:
        """Build fixed patterns or train what the attack needs. Default: nothing.

        Args:
            x: raw training inputs, ``[N, C, ...]``.
            y: their labels, ``[N]``.
            target_label: the attack's target class.
            generator: CPU generator seeded by ``poison_seed``.
            cache_dir: where trained attack parts may be cached, or None.
        """

    @abc.abstractmethod
    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Return triggered copies of ``x`` (``[N, C, ...]``, same shape and dtype)."""

    def describe(self) -> dict[str, Any]:
        """Parameters recorded in the poison manifest."""
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"name": type(self).__name__, **{k: _plain(v) for k, v in params.items()}}


def _plain(value: Any) -> Any:
    """JSON-friendly version of a trigger parameter."""
    if isinstance(value, Tensor):
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
