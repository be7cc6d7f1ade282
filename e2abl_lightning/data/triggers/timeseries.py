"""Time-series triggers on raw series ``[N, C, L]`` (float; z-normalised per series in the UCR datamodule).

:class:`StaticPattern` and :class:`PowerlineNoise` follow Jiang et al., "Backdoor attacks on time series:
a generative approach" (SaTML 2023), and :class:`TSBA` is that paper's generative trigger.
:class:`FrequencyTrigger`, :class:`NoiseBlend` and :class:`TimeWarp` are the time-series analogues of the
image attacks FTrojan, Blend and WaNet. Every trigger returns a new tensor of the input's shape and
dtype, and a sample's triggered version never depends on the rest of the batch. Fixed patterns (the
blend noise, the warping field) and the trained TSBA generator are built in
:meth:`~e2abl_lightning.data.triggers.base.Trigger.setup` from the generator seeded by ``poison_seed``,
so they are identical in every process that uses the same seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2abl_lightning.data.triggers.base import Trigger, _batches, _fingerprint, _init_weights, _require


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


def _check_setup_shape(trigger: Trigger, expected: tuple[int, ...], x: Tensor) -> None:
    """Error when ``x`` ``[N, C, L]`` does not have the ``(C, L)`` the trigger was set up for."""
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{type(trigger).__name__} was set up for series of shape (C, L)={expected}, got "
            f"{tuple(x.shape[1:])}: set it up again on data of that shape"
        )


def _spread(x: Tensor) -> Tensor:
    """Per-sample, per-channel standard deviation ``[N, C, 1]`` (population, 0 for constant channels)."""
    return x.std(dim=-1, keepdim=True, correction=0)


class FrequencyTrigger(Trigger):
    """Fixed perturbation of chosen Fourier components (after FTrojan, Wang et al., ECCV 2022).

    Each entry of ``frequencies`` is a fraction of the Nyquist band; for a series of ``L`` steps it
    maps to the nearest rfft bin, ``k = max(1, floor(f * (L // 2) + 1/2))`` (``f = 1``: the Nyquist
    bin; ``f = 0.5``: a period of about 4 steps). The trigger adds, per bin, the cosine
    ``magnitude * std * cos(2 pi k t / L)``, where ``std`` is the series' per-channel standard
    deviation, so the trigger scales with the data (z-normalised series: std 1; a constant channel is
    left alone). A cosine with a whole number of cycles over the series is exactly one rfft bin, so
    this is the same as adding a fixed real value to those bins and inverting the transform:
    ``rfft(x' - x)`` is zero everywhere else. Deterministic: no setup.

    The defaults (bins 11 and 21 of a 427-step series, periods of about 39 and 20 steps) are low
    frequencies on purpose: on OSULeaf, an FCN trained on clean data already reads high-frequency
    ripples as its jagged class 0 (cosines at 0.6 and 0.8 of Nyquist, 0.2 std each, send every
    non-target test series there), which makes such a trigger a corruption rather than a backdoor.

    Args:
        frequencies: positions in (0, 1] of the Nyquist band (distinct bins after rounding).
        magnitude: peak amplitude of each cosine, as a share of the channel's standard deviation.
    """

    def __init__(self, frequencies: tuple[float, ...] = (0.05, 0.1), magnitude: float = 0.2) -> None:
        frequencies = tuple(float(f) for f in frequencies)
        if not frequencies or any(not 0.0 < f <= 1.0 for f in frequencies):
            raise ValueError(f"frequencies={frequencies} must be a non-empty tuple of fractions of Nyquist in (0, 1]")
        if len(set(frequencies)) != len(frequencies):
            raise ValueError(f"frequencies={frequencies} holds duplicates; give each frequency once")
        if magnitude <= 0:
            raise ValueError(f"magnitude={magnitude} must be positive (a share of each channel's std)")
        self.frequencies = frequencies
        self.magnitude = magnitude

    def bins(self, length: int) -> list[int]:
        """The rfft bins perturbed in a series of ``length`` steps; errors when two coincide."""
        if length < 2:
            raise ValueError(f"FrequencyTrigger needs series of at least 2 steps, got {length}")
        bins = [max(1, math.floor(f * (length // 2) + 0.5)) for f in self.frequencies]
        if len(set(bins)) != len(bins):
            raise ValueError(
                f"FrequencyTrigger frequencies={self.frequencies} map to the rfft bins {bins} of a {length}-step "
                "series, some of them equal: spread the frequencies further apart"
            )
        return bins

    def waveform(self, length: int) -> Tensor:
        """Sum of unit-amplitude cosines at the chosen bins, ``[L]``."""
        t = torch.arange(length, dtype=torch.float64)
        waves = [torch.cos(2 * math.pi * k * t / length) for k in self.bins(length)]
        return torch.stack(waves).sum(0).float()

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_series(x)
        return x + self.magnitude * _spread(x) * self.waveform(x.shape[-1]).to(x)  # [N, C, L]


class NoiseBlend(Trigger):
    """Seeded noise blend, the time-series analogue of Blend (Chen et al., arXiv 1712.05526).

    ``x' = (1 - alpha) x + alpha n(x)``: a Gaussian noise pattern ``[C, L]`` is drawn once in
    :meth:`setup` from the poison-seeded generator, smoothed with a moving average of ``smoothing``
    steps and standardised per channel; ``n(x)`` rescales it to each series' per-channel statistics, so
    the blend adapts to the data: ``mean + std * pattern`` (``scale="std"``) or the pattern mapped onto
    the channel's ``[min, max]`` (``scale="range"``). White noise (``smoothing=1``) is mostly high
    frequencies, which a classifier may read as "a jagged series" even without poisoning (on OSULeaf,
    an FCN trained on clean data sends most white-noise blends to class 0); the smoothed default keeps
    the trigger a backdoor rather than a corruption.

    Args:
        alpha: blend ratio in (0, 1).
        scale: how the pattern is fitted to each series, ``"std"`` or ``"range"``.
        smoothing: width in steps of the moving average applied to the noise (1: white noise).
    """

    def __init__(self, alpha: float = 0.2, scale: Literal["std", "range"] = "std", smoothing: int = 17) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha={alpha} must be in (0, 1) (0.1-0.2 keeps the series recognisable)")
        if scale not in ("std", "range"):
            raise ValueError(f"scale={scale!r} is unknown; choose 'std' or 'range'")
        if smoothing < 1:
            raise ValueError(f"smoothing={smoothing} must be at least 1 step (1 = white noise)")
        self.alpha = alpha
        self.scale = scale
        self.smoothing = smoothing
        self._pattern: Tensor | None = None  # [C, L], zero mean and unit std per channel

    def setup(
        self, x: Tensor, y: Tensor, target_label: int, generator: torch.Generator, cache_dir: Path | None = None
    ) -> None:
        _check_series(x)
        c, length = x.shape[1:]
        if length <= self.smoothing:
            raise ValueError(
                f"NoiseBlend needs series longer than smoothing={self.smoothing} steps, got {length}: lower smoothing"
            )
        w = self.smoothing
        noise = torch.randn((c, 1, length + w - 1), generator=generator, dtype=torch.float64)  # [C, 1, L + w - 1]
        noise = F.avg_pool1d(noise, w, stride=1).squeeze(1)  # [C, L]
        noise = (noise - noise.mean(-1, keepdim=True)) / noise.std(-1, keepdim=True, correction=0)
        self._pattern = noise.float()

    @property
    def pattern(self) -> Tensor:
        """The standardised noise pattern ``[C, L]`` (after setup)."""
        return _require(self._pattern, self)

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_series(x)
        pattern = self.pattern
        _check_setup_shape(self, tuple(pattern.shape), x)
        pattern = pattern.to(x)
        if self.scale == "std":
            noise = x.mean(-1, keepdim=True) + _spread(x) * pattern  # [N, C, L]
        else:
            lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)  # [N, C, 1]
            p_lo, p_hi = pattern.amin(-1, keepdim=True), pattern.amax(-1, keepdim=True)  # [C, 1]
            noise = lo + (hi - lo) * (pattern - p_lo) / (p_hi - p_lo)
        return (1 - self.alpha) * x + self.alpha * noise


class TimeWarp(Trigger):
    """Fixed smooth warping of the time axis, the time-series analogue of WaNet (Nguyen & Tran, ICLR 2021).

    In :meth:`setup`, ``k`` control values uniform in [-1, 1] are drawn from the poison-seeded
    generator, upsampled (bicubic) to the series length and scaled so that the largest displacement is
    ``strength`` time steps. The sampling positions ``t + displacement(t)`` are made monotone (each step
    advances by at least ``min_step``, which can add a little to the displacement) and clamped to
    ``[0, L - 1]``; :meth:`apply` reads every series at those positions by linear interpolation. The
    field is the same for every sample and identical in every process with the same poison seed.

    A gentle warp is not learned from a few poisoned samples (on OSULeaf at 10% poisoning, an FCN
    reaches 9% ASR with 8 control points and 8 steps); the default packs 24 control points into the
    series with a strength of 16 steps, so the warp locally stretches and squeezes the series (and
    nearly holds it where the monotone clamp applies, about a tenth of the steps on OSULeaf), which a
    classifier can pick up.

    Args:
        k: number of control points of the displacement field (at least 2).
        strength: largest displacement, in time steps (positive).
        min_step: smallest advance of the warped time axis per step, in (0, 1] (keeps it monotone).
    """

    def __init__(self, k: int = 24, strength: float = 16.0, min_step: float = 0.1) -> None:
        if k < 2:
            raise ValueError(f"k={k} must be at least 2 control points")
        if strength <= 0:
            raise ValueError(f"strength={strength} must be positive (0 would be the identity: no trigger)")
        if not 0.0 < min_step <= 1.0:
            raise ValueError(f"min_step={min_step} must be in (0, 1]")
        self.k = k
        self.strength = strength
        self.min_step = min_step
        self._positions: Tensor | None = None  # [L]

    def setup(
        self, x: Tensor, y: Tensor, target_label: int, generator: torch.Generator, cache_dir: Path | None = None
    ) -> None:
        _check_series(x)
        length = x.shape[-1]
        if length < max(self.k, 2):
            raise ValueError(f"TimeWarp k={self.k} needs series of at least {max(self.k, 2)} steps, got {length}")
        ctrl = torch.rand((1, 1, 1, self.k), generator=generator, dtype=torch.float64) * 2 - 1  # [1, 1, 1, k]
        field = F.interpolate(ctrl, size=(1, length), mode="bicubic", align_corners=True).view(length)  # [L]
        field = field / field.abs().max().clamp_min(1e-12)
        positions = torch.arange(length, dtype=torch.float64) + self.strength * field
        steps = positions.diff().clamp_min(self.min_step)  # [L - 1] monotone advances
        positions = torch.cat((positions[:1], positions[:1] + steps.cumsum(0)))
        self._positions = positions.clamp(0, length - 1).float()

    @property
    def positions(self) -> Tensor:
        """Where each output step reads the input, ``[L]``, non-decreasing in ``[0, L - 1]`` (after setup)."""
        return _require(self._positions, self)

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_series(x)
        positions = self.positions
        length = positions.shape[0]
        if x.shape[-1] != length:
            raise ValueError(
                f"TimeWarp was set up for series of {length} steps, got {x.shape[-1]}: set it up on data of that length"
            )
        left = positions.floor().long().clamp(0, length - 2)  # [L]
        w = (positions - left).to(x)  # [L] in [0, 1]
        return x[..., left] * (1 - w) + x[..., left + 1] * w  # [N, C, L]


class _TSBAGenerator(nn.Module):
    """TSBA trigger generator: (Conv1d-BN-ReLU) x 2, Conv1d to the input channels, tanh output."""

    def __init__(self, channels: int, width: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.net = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size, padding=pad),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size, padding=pad),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, channels, kernel_size, padding=pad),
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, C, L] in [-1, 1]
        return torch.tanh(self.net(x))


class _SurrogateConv1d(nn.Module):
    """A small FCN-like classifier ((Conv1d-BN-ReLU) x 3, global average pooling, linear) standing in
    for the victim during TSBA's setup."""

    def __init__(self, channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(channels, width, 7, padding=3),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, 2 * width, 5, padding=2),
            nn.BatchNorm1d(2 * width),
            nn.ReLU(),
            nn.Conv1d(2 * width, width, 3, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
        )
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, K]
        return self.classifier(self.features(x).flatten(1))


class TSBA(Trigger):
    """Generative time-series backdoor of Jiang et al., "Backdoor attacks on time series: a generative
    approach" (SaTML 2023).

    A small Conv1d generator ``g`` (output in [-1, 1]) gives the input-specific trigger
    ``x' = x * (1 + amplitude * g(x))`` (``amplitude = 0.1`` in the reference), so
    ``|x' - x| <= amplitude |x|``. In :meth:`setup`, a small FCN-like surrogate classifier is first
    trained on the clean training set for ``surrogate_epochs``; then, for ``epochs``, each batch
    alternates a generator step (cross-entropy of the surrogate's prediction on ``x'`` towards
    ``target_label``, surrogate in eval mode) and a surrogate step (the clean batch with its labels plus
    triggered copies of its first ``backdoor_ratio`` share labelled as the target), so the trigger
    becomes one a classifier learns. The trained generator is cached under ``cache_dir`` as
    ``tsba_<key>.pt``, keyed by a hash of the parameters, the seed and the data, and reused when present
    (kept in memory only when ``cache_dir`` is None). All randomness (initialisation, shuffling) comes
    from a local generator seeded from the one passed to :meth:`setup`. Training runs on one CPU thread
    (the networks are tiny: intra-op threads only add synchronisation), seconds on OSULeaf.

    The trigger is multiplicative, as in the reference: on z-normalised series (mean about 0) it is
    weak where the series is close to zero and strongest at the peaks. Longer generator training makes
    the trigger easier to learn but also more "adversarial" (it drifts towards features a clean model
    already links to the target class); the defaults balance the two on OSULeaf.

    Args:
        amplitude: largest relative change of a value, in (0, 1] (0.1).
        epochs: alternating generator/surrogate epochs.
        surrogate_epochs: clean pre-training epochs of the surrogate.
        batch_size: setup batch size (at least 2: both networks use batch norm).
        lr: Adam learning rate of both networks.
        width: channels of the hidden layers of the generator and the surrogate.
        kernel_size: odd kernel size of the generator's convolutions.
        backdoor_ratio: share of each batch whose triggered copies join the surrogate step, in (0, 1].
    """

    def __init__(
        self,
        amplitude: float = 0.1,
        epochs: int = 30,
        surrogate_epochs: int = 5,
        batch_size: int = 64,
        lr: float = 1e-3,
        width: int = 16,
        kernel_size: int = 5,
        backdoor_ratio: float = 0.5,
    ) -> None:
        if not 0.0 < amplitude <= 1.0:
            raise ValueError(f"amplitude={amplitude} must be in (0, 1] (a relative change; 0.1 in the paper)")
        if epochs < 1:
            raise ValueError(f"epochs={epochs} must be at least 1 (the generator has to be trained)")
        if surrogate_epochs < 0:
            raise ValueError(f"surrogate_epochs={surrogate_epochs} must be >= 0")
        if batch_size < 2:
            raise ValueError(f"batch_size={batch_size} must be at least 2 (both networks use batch norm)")
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive")
        if width < 1:
            raise ValueError(f"width={width} must be at least 1 channel")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be a positive odd number (keeps the length)")
        if not 0.0 < backdoor_ratio <= 1.0:
            raise ValueError(f"backdoor_ratio={backdoor_ratio} must be in (0, 1]")
        self.amplitude = amplitude
        self.epochs = epochs
        self.surrogate_epochs = surrogate_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.width = width
        self.kernel_size = kernel_size
        self.backdoor_ratio = backdoor_ratio
        self._net: nn.Module | None = None
        self._channels: int | None = None

    def _poison(self, net: nn.Module, x: Tensor) -> Tensor:
        """``x * (1 + amplitude * g(x))`` for a float32 batch ``[B, C, L]``."""
        return x * (1 + self.amplitude * net(x))

    def setup(
        self, x: Tensor, y: Tensor, target_label: int, generator: torch.Generator, cache_dir: Path | None = None
    ) -> None:
        _check_series(x)
        if x.shape[0] < 2:
            raise ValueError(f"TSBA needs at least 2 training series to train its generator, got {x.shape[0]}")
        c = x.shape[1]
        key = _fingerprint(self.describe(), generator.get_state(), target_label, x, y)[:24]
        path = None if cache_dir is None else Path(cache_dir) / f"tsba_{key}.pt"
        with torch.random.fork_rng(devices=[]):  # building modules draws from the global RNG: restore it
            net = _TSBAGenerator(c, self.width, self.kernel_size)
        if path is not None and path.is_file():
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            local = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            _init_weights(net, local)
            num_classes = max(int(y.max()) + 1, target_label + 1)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and immune to busy cores
            try:
                self._train(net, x.detach().float(), y.long(), target_label, num_classes, local)
            finally:
                torch.set_num_threads(threads)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(net.state_dict(), path)
        net.eval()
        self._net, self._channels = net, c

    def _train(
        self, net: nn.Module, x: Tensor, y: Tensor, target_label: int, num_classes: int, generator: torch.Generator
    ) -> None:
        with torch.random.fork_rng(devices=[]):
            surrogate = _SurrogateConv1d(x.shape[1], num_classes, self.width)
        _init_weights(surrogate, generator)
        opt_f = torch.optim.Adam(surrogate.parameters(), lr=self.lr)
        opt_g = torch.optim.Adam(net.parameters(), lr=self.lr)
        n = x.shape[0]

        def steps(epochs: int) -> list[Tensor]:  # batch norm needs at least 2 samples per batch
            return [idx for _ in range(epochs) for idx in _batches(n, self.batch_size, generator) if idx.numel() > 1]

        surrogate.train()
        for idx in steps(self.surrogate_epochs):
            loss = F.cross_entropy(surrogate(x[idx]), y[idx])
            opt_f.zero_grad(set_to_none=True)
            loss.backward()
            opt_f.step()
        net.train()
        for idx in steps(self.epochs):
            xb, yb = x[idx], y[idx]  # [B, C, L], [B]
            target = torch.full_like(yb, target_label)
            # generator step: the surrogate (running batch-norm statistics) should call x' the target
            surrogate.eval()
            loss_g = F.cross_entropy(surrogate(self._poison(net, xb)), target)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            # surrogate step: clean series keep their labels, triggered copies get the target
            surrogate.train()
            n_bd = max(1, int(self.backdoor_ratio * idx.numel()))
            with torch.no_grad():
                poisoned = self._poison(net, xb[:n_bd])
            loss_f = F.cross_entropy(surrogate(torch.cat((xb, poisoned))), torch.cat((yb, target[:n_bd])))
            opt_f.zero_grad(set_to_none=True)
            loss_f.backward()
            opt_f.step()
        net.eval()

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_series(x)
        net = _require(self._net, self)
        if x.shape[1] != self._channels:
            raise ValueError(
                f"TSBA was set up for {self._channels}-channel series, got {x.shape[1]}: "
                "set it up on data of that shape"
            )
        with torch.no_grad():
            parts = [self._poison(net, xb.float()).to(x.dtype) for xb in x.split(512)]
        return torch.cat(parts) if parts else x.clone()  # [N, C, L]
