"""The trigger interface shared by image and time-series attacks (no Lightning)."""

from __future__ import annotations

import abc
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class Trigger(abc.ABC):
    """A backdoor trigger applied to raw inputs before augmentation and normalisation.

    Lifecycle: the datamodule calls :meth:`setup` once with the raw training set and a generator
    seeded by ``poison_seed`` (fixed patterns and trained generators are built there), then
    :meth:`apply` on the selected training samples and :meth:`apply_test` on the poisoned test set. When
    :attr:`negative_ratio` is positive, it also picks ``round(negative_ratio * num_poisoned)`` other
    (not poisoned) training samples and replaces them by :meth:`negatives`, keeping their clean labels
    (WaNet's noise mode, BppAttack's negative samples). Everything random comes from the generators
    passed in, never from the global RNG.
    """

    #: Whether the attack keeps labels (clean-label attacks such as SIG).
    clean_label: bool = False

    #: Label-kept negative training samples the attack adds per poisoned sample (0: none). Subclasses
    #: set it per instance or override it with a property.
    negative_ratio: float = 0.0

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

    def apply_test(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Return triggered copies of test inputs for the ASR set. Default: :meth:`apply`.

        An attack may trigger test inputs differently from the poisoned training samples (SIG's
        stronger test-time signal); the training set never goes through this method.
        """
        return self.apply(x, generator)

    def negatives(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Return label-kept "negative" samples built from clean inputs ``x``.

        They teach the victim that trigger-like changes alone do not mean the target class, which
        makes the backdoor harder to spot. Only called when :attr:`negative_ratio` is positive.

        Args:
            x: clean inputs, ``[N, C, ...]``.
            generator: CPU generator for any randomness.

        Returns:
            ``[N, C, ...]``, same shape and dtype as ``x``.
        """
        raise NotImplementedError(f"{type(self).__name__} makes no negative samples; keep its negative_ratio at 0")

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


# ---------------------------------------------------------------------------------------------------
# Helpers shared by the image and time-series triggers
# ---------------------------------------------------------------------------------------------------


def _require(value: Any, trigger: Trigger) -> Any:
    """Return ``value``, or explain that ``setup`` has to run first."""
    if value is None:
        raise RuntimeError(f"{type(trigger).__name__}.apply() needs setup() first (it builds the trigger)")
    return value


def _fingerprint(*parts: Any) -> str:
    """SHA-256 over tensors, arrays and JSON-able values (cache keys)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            digest.update(str((part.dtype, tuple(part.shape))).encode())
            digest.update(part.detach().cpu().contiguous().numpy())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise conv/linear layers from ``generator`` (never the global RNG)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A seeded shuffle of ``range(n)`` cut into batches."""
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
