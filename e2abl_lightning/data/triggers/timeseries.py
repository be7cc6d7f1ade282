"""Time-series triggers of Jiang et al., "Backdoor attacks on time series" (SaTML 2023).

Inputs are raw series ``[N, C, L]`` (float). Both triggers are deterministic functions of the input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from e2abl_lightning.data.triggers.base import Trigger


def _check_series(x: Tensor) -> None:
    if x.ndim != 3:
        raise ValueError(f"time-series triggers expect [N, C, L] inputs, got shape {tuple(x.shape)}")


class StaticPattern(Trigger):
    """Square wave over the first time steps, alternating each channel's max and min.

    Args:
        fraction: share of the series length the pattern covers (0.02 in the paper).
        min_steps: lower bound on the pattern length, so short series still get a visible trigger.
        half_period: steps spent at each level before switching (1 = alternate every step).
        position: where the pattern starts, ``"start"`` or ``"end"`` of the series.
    """

    def __init__(
        self,
        fraction: float = 0.02,
        min_steps: int = 4,
        half_period: int = 1,
        position: str = "start",
    ) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be in (0, 1]")
        if min_steps < 1:
            raise ValueError(f"min_steps={min_steps} must be at least 1")
        if half_period < 1:
            raise ValueError(f"half_period={half_period} must be at least 1")
        if position not in ("start", "end"):
            raise ValueError(f"position={position!r} must be 'start' or 'end'")
        self.fraction = fraction
        self.min_steps = min_steps
        self.half_period = half_period
        self.position = position

    def num_steps(self, length: int) -> int:
        """Pattern length for a series of ``length`` steps; errors when it does not fit."""
        steps = max(self.min_steps, math.ceil(self.fraction * length))
        if steps > length:
            raise ValueError(
                f"StaticPattern needs {steps} steps but the series has only {length}: lower min_steps or fraction"
            )
        return steps

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_series(x)
        steps = self.num_steps(x.shape[-1])
        hi = x.amax(dim=-1, keepdim=True)  # [N, C, 1]
        lo = x.amin(dim=-1, keepdim=True)  # [N, C, 1]
        phase = (torch.arange(steps) // self.half_period) % 2 == 0  # [S]
        wave = torch.where(phase, hi, lo)  # [N, C, S]
        out = x.clone()
        if self.position == "start":
            out[..., :steps] = wave
        else:
            out[..., -steps:] = wave
        return out


class PowerlineNoise(Trigger):
    """Additive mains-hum-like waveform (fundamental plus third harmonic).

    The amplitude is ``amplitude`` times each series' per-channel range, so the trigger scales with
    the data.

    Args:
        period: time steps per cycle of the fundamental (at least 2).
        amplitude: peak amplitude as a share of the series' range (0.1 in the paper).
        harmonic: relative weight of the third harmonic.
    """

    def __init__(self, period: int = 10, amplitude: float = 0.1, harmonic: float = 0.3) -> None:
        if period < 2:
            raise ValueError(f"period={period} must be at least 2 time steps")
        if amplitude <= 0:
            raise ValueError(f"amplitude={amplitude} must be positive")
        self.period = period
        self.amplitude = amplitude
        self.harmonic = harmonic

    def waveform(self, length: int) -> Tensor:
        """Unit-peak waveform of ``length`` steps, ``[L]``."""
        if self.period > length:
            raise ValueError(
                f"PowerlineNoise period={self.period} is longer than the series ({length} steps): lower period"
            )
        t = torch.arange(length, dtype=torch.float32) * (2 * math.pi / self.period)
        wave = torch.sin(t) + self.harmonic * torch.sin(3 * t)
        return wave / wave.abs().max()

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_series(x)
        span = x.amax(dim=-1, keepdim=True) - x.amin(dim=-1, keepdim=True)  # [N, C, 1]
        return x + self.amplitude * span * self.waveform(x.shape[-1]).to(x)
