"""Image backdoor triggers on raw images ``[N, C, H, W]`` in [0, 1] (no Lightning).

Every trigger returns a new tensor of the same shape, clipped to [0, 1]. Fixed patterns (Blend's noise,
Trojan's patch, WaNet's warping field) and trained parts (the label-consistent surrogate, the
input-aware generators) are built in :meth:`~e2abl_lightning.data.triggers.base.Trigger.setup` from the
generator seeded by ``poison_seed``, so they are identical in every process that uses the same seed.
Parameters follow the anchors (see ``REFERENCE.md``, section 4); the papers are cited per class.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2abl_lightning.data.triggers.base import Trigger, _batches, _fingerprint, _init_weights, _require

#: The 3x3 checker of the BadNets "grid" variant (1 = white, 0 = black), bottom-right corner.
GRID_PATTERN = ((1.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def _check_images(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"image triggers expect [N, C, H, W] inputs, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"image triggers expect float images in [0, 1], got dtype {x.dtype}")


def _patch_pattern(pattern: str, size: int) -> Tensor:
    """A BadNets-style patch ``[size, size]`` in {0, 1}."""
    if pattern == "grid":
        return torch.tensor(GRID_PATTERN)
    return torch.ones(size, size)


def _stamp(x: Tensor, patch: Tensor) -> Tensor:
    """Replace the bottom-right corner of ``x`` ``[N, C, H, W]`` with ``patch`` ``[h, w]`` or ``[C, h, w]``."""
    h, w = patch.shape[-2:]
    if h > x.shape[-2] or w > x.shape[-1]:
        raise ValueError(f"a {h}x{w} patch does not fit {x.shape[-2]}x{x.shape[-1]} images; lower the patch size")
    out = x.clone()
    out[..., -h:, -w:] = patch.to(x)
    return out


def _subset(x: Tensor, y: Tensor, max_samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """At most ``max_samples`` seeded random samples of ``(x, y)``."""
    if x.shape[0] <= max_samples:
        return x, y
    keep = torch.randperm(x.shape[0], generator=generator)[:max_samples]
    return x[keep], y[keep]


class _SurrogateCNN(nn.Module):
    """A tiny CNN used as the attacker's surrogate classifier (any ``C, H, W``)."""

    def __init__(self, channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, K]
        return self.classifier(self.features(x).flatten(1))


# ---------------------------------------------------------------------------------------------------
# Fixed-pattern triggers
# ---------------------------------------------------------------------------------------------------


class BadNets(Trigger):
    """Patch trigger of Gu et al., "BadNets" (arXiv 1708.06733): pixels replaced at the bottom right.

    Args:
        pattern: ``"square"`` (a white ``size x size`` square) or ``"grid"`` (the 3x3 checker
            ``[[1,0,1],[0,1,0],[1,0,0]]`` used by the ABL anchors).
        size: side of the square in pixels (``"square"`` only; the grid is always 3x3).
    """

    def __init__(self, pattern: Literal["square", "grid"] = "square", size: int = 3) -> None:
        if pattern not in ("square", "grid"):
            raise ValueError(f"pattern={pattern!r} is unknown; choose 'square' or 'grid'")
        if size < 1:
            raise ValueError(f"size={size} must be at least 1 pixel")
        self.pattern = pattern
        self.size = size

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(x)
        return _stamp(x, _patch_pattern(self.pattern, self.size))  # [N, C, H, W]


class Blend(Trigger):
    """Blended trigger of Chen et al., "Targeted backdoor attacks ... data poisoning" (arXiv 1712.05526).

    ``x' = (1 - alpha) x + alpha t`` with ``t`` a seeded uniform-noise image built in :meth:`setup`, or
    an image file given by the user (loaded with PIL, converted to the data's channels, resized).

    Args:
        alpha: blend ratio in (0, 1] (0.2 in the anchors).
        image_path: optional trigger image (PNG/JPEG); None for seeded uniform noise.
        resize: resize a user image to the data's size; if False its size must match exactly.
    """

    def __init__(self, alpha: float = 0.2, image_path: str | None = None, resize: bool = True) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must be in (0, 1]")
        if image_path is not None and not Path(image_path).expanduser().is_file():
            raise ValueError(f"image_path={image_path!r} is not a file; give a PNG/JPEG image or None for noise")
        self.alpha = alpha
        self.image_path = image_path
        self.resize = resize
        self._pattern: Tensor | None = None  # [C, H, W]

    def setup(
        self, x: Tensor, y: Tensor, target_label: int, generator: torch.Generator, cache_dir: Path | None = None
    ) -> None:
        _check_images(x)
        c, h, w = x.shape[1:]
        if self.image_path is None:
            self._pattern = torch.rand((c, h, w), generator=generator)  # [C, H, W]
        else:
            self._pattern = load_image(self.image_path, c, (h, w) if self.resize else None, (h, w))

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(x)
        pattern = _require(self._pattern, self)
        if pattern.shape != x.shape[1:]:
            raise ValueError(f"Blend was set up for {tuple(pattern.shape)} images, got {tuple(x.shape[1:])}")
        return ((1 - self.alpha) * x + self.alpha * pattern.to(x)).clamp(0, 1)  # [N, C, H, W]


def load_image(path: str, channels: int, size: tuple[int, int] | None, expected: tuple[int, int]) -> Tensor:
    """Load an image file as ``[channels, H, W]`` in [0, 1].

    PIL's decompression-bomb guard stays on; the file is fully decoded inside a context manager.

    Args:
        path: image file.
        channels: 1 (greyscale) or 3 (RGB).
        size: ``(H, W)`` to resize to, or None to keep the file's size.
        expected: the size the data needs; a mismatch (without resizing) is a ValueError.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"trigger images can be made for 1 or 3 channels, the data has {channels}")
    try:
        with Image.open(Path(path).expanduser()) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0  # [H, W] or [H, W, 3]
    except (OSError, SyntaxError) as err:  # PIL: unidentified, truncated or broken files
        raise ValueError(f"trigger image {path!r} cannot be read as an image ({err}); give a PNG/JPEG file") from err
    if arr.shape[:2] != tuple(expected):
        raise ValueError(
            f"trigger image {path!r} is {arr.shape[0]}x{arr.shape[1]} but the data is "
            f"{expected[0]}x{expected[1]}; resize it or pass resize=True"
        )
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1).contiguous()


class SIG(Trigger):
    """Clean-label sinusoidal signal of Barni et al., "A new backdoor attack in CNNs by training set
    corruption without label poisoning" (ICIP 2019, arXiv 1902.11237).

    ``x' = clip(x + delta/255 * sin(2 pi j f / W))`` along the columns ``j``, same for every row and
    channel. Only target-class samples are poisoned and labels are kept (``attack_mode: clean_label``).
    The paper separates the poisoning strength from the strength of the signal the attacker adds at
    test time (its Delta_tr and Delta_ts); ``test_delta`` is the latter.

    Args:
        delta: amplitude of the poisoned training samples, in 0-255 pixel units (20 or 40 in the anchors).
        frequency: number of periods across the image width (6).
        test_delta: amplitude on the triggered test inputs (the ASR set); None uses ``delta``.
    """

    clean_label = True

    def __init__(self, delta: float = 20.0, frequency: float = 6.0, test_delta: float | None = None) -> None:
        for name, value in (("delta", delta), ("test_delta", test_delta)):
            if value is not None and not 0.0 < value <= 255.0:
                raise ValueError(f"{name}={value} must be in (0, 255] (pixel units)")
        if frequency <= 0:
            raise ValueError(f"frequency={frequency} must be positive")
        self.delta = delta
        self.frequency = frequency
        self.test_delta = test_delta

    def signal(self, width: int, delta: float | None = None) -> Tensor:
        """The additive row signal of amplitude ``delta`` (default: the training one), ``[W]`` in [0, 1] units."""
        j = torch.arange(width, dtype=torch.float32)
        amplitude = self.delta if delta is None else delta
        return (amplitude / 255.0) * torch.sin(2 * math.pi * j * self.frequency / width)

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._add_signal(x, self.delta)

    def apply_test(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._add_signal(x, self.test_delta)

    def _add_signal(self, x: Tensor, delta: float | None) -> Tensor:
        _check_images(x)
        return (x + self.signal(x.shape[-1], delta).to(x)).clamp(0, 1)  # [N, C, H, W] + [W]


class Trojan(Trigger):
    """Trojan-style additive patch (after Liu et al., "Trojaning attack on neural networks", NDSS 2018).

    TrojanNN optimises its patch to excite chosen neurons of a victim model; here, as in the anchors'
    re-implementations, the patch is a fixed pattern: a seeded random ``size x size`` pattern with
    values in ``[-amplitude, amplitude]`` per channel, built in :meth:`setup`, added at the bottom-right
    corner and clipped.

    Args:
        size: side of the patch in pixels.
        amplitude: largest change of a pixel, in [0, 1] units.
    """

    def __init__(self, size: int = 5, amplitude: float = 0.5) -> None:
        if size < 1:
            raise ValueError(f"size={size} must be at least 1 pixel")
        if not 0.0 < amplitude <= 1.0:
            raise ValueError(f"amplitude={amplitude} must be in (0, 1]")
        self.size = size
        self.amplitude = amplitude
        self._patch: Tensor | None = None  # [C, size, size]

    def setup(
        self, x: Tensor, y: Tensor, target_label: int, generator: torch.Generator, cache_dir: Path | None = None
    ) -> None:
        _check_images(x)
        if self.size > min(x.shape[-2:]):
            raise ValueError(f"size={self.size} does not fit {x.shape[-2]}x{x.shape[-1]} images")
        u = torch.rand((x.shape[1], self.size, self.size), generator=generator)  # [C, s, s]
        self._patch = self.amplitude * (2 * u - 1)

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(x)
        patch = _require(self._patch, self).to(x)  # [C, s, s]
        out = x.clone()
        s = self.size
        out[..., -s:, -s:] = (out[..., -s:, -s:] + patch).clamp(0, 1)
        return out


class WaNet(Trigger):
    """Warping trigger of Nguyen & Tran, "WaNet -- imperceptible warping-based backdoor attack"
    (ICLR 2021, arXiv 2102.10369).

    A random ``k x k`` field in [-1, 1], normalised by its mean absolute value, is upsampled
    (bicubic) to ``H x W``; the sampling grid is ``identity + s * field / H``, clamped to [-1, 1], and
    applied with ``grid_sample(align_corners=True)``. The field comes from the setup generator, so it
    is identical in every process with the same poison seed.

    In *noise mode* the attack also trains on ``cross_ratio`` (2) times as many "noise" samples as
    poisoned ones: other training images warped with the backdoor grid plus per-sample uniform noise
    of up to one pixel (:meth:`negatives`), with their **clean** labels, so that only the exact warp
    means the target class. As in the official code, they replace clean samples (the training set
    keeps its size); the datamodule picks them (:attr:`negative_ratio` = ``cross_ratio``).

    Args:
        k: control-grid size of the warping field (4).
        s: warping strength (0.5).
        grid_rescale: scale of the final grid (1 keeps the image borders).
        noise_mode: add the label-kept noise samples (WaNet's noise mode).
        cross_ratio: noise samples per poisoned sample in noise mode (2).
    """

    def __init__(
        self,
        k: int = 4,
        s: float = 0.5,
        grid_rescale: float = 1.0,
        noise_mode: bool = False,
        cross_ratio: float = 2.0,
    ) -> None:
        if k < 2:
            raise ValueError(f"k={k} must be at least 2")
        if s <= 0:
            raise ValueError(f"s={s} must be positive")
        if grid_rescale <= 0:
            raise ValueError(f"grid_rescale={grid_rescale} must be positive")
        if not cross_ratio >= 0:  # also rejects NaN
            raise ValueError(f"cross_ratio={cross_ratio} must be >= 0 (noise samples per poisoned sample, e.g. 2)")
        self.k = k
        self.s = s
        self.grid_rescale = grid_rescale
        self.noise_mode = noise_mode
        self.cross_ratio = cross_ratio
        self._field: Tensor | None = None  # [1, H, W, 2]

    @property
    def negative_ratio(self) -> float:  # type: ignore[override]
        """Noise samples per poisoned sample: ``cross_ratio`` in noise mode, else 0."""
        return float(self.cross_ratio) if self.noise_mode else 0.0

    def setup(
        self, x: Tensor, y: Tensor, target_label: int, generator: torch.Generator, cache_dir: Path | None = None
    ) -> None:
        _check_images(x)
        h, w = x.shape[-2:]
        ins = torch.rand((1, 2, self.k, self.k), generator=generator) * 2 - 1  # [1, 2, k, k]
        ins = ins / ins.abs().mean()
        field = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True)  # [1, 2, H, W]
        self._field = field.permute(0, 2, 3, 1).contiguous()  # [1, H, W, 2]

    @property
    def field(self) -> Tensor:
        """The warping field ``[1, H, W, 2]`` (after setup)."""
        return _require(self._field, self)

    def grid(self, height: int, width: int) -> Tensor:
        """The backdoor sampling grid ``[1, H, W, 2]``."""
        field = self.field
        if field.shape[1:3] != (height, width):
            raise ValueError(f"WaNet was set up for {tuple(field.shape[1:3])} images, got {(height, width)}")
        ys = torch.linspace(-1, 1, height)
        xs = torch.linspace(-1, 1, width)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
        identity = torch.stack((gx, gy), dim=-1)[None]  # [1, H, W, 2] (x, y) order for grid_sample
        return ((identity + self.s * field / height) * self.grid_rescale).clamp(-1, 1)

    def _warp(self, x: Tensor, grid: Tensor) -> Tensor:
        return F.grid_sample(x, grid.to(x), mode="bilinear", padding_mode="zeros", align_corners=True).clamp(0, 1)

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(x)
        grid = self.grid(*x.shape[-2:]).expand(x.shape[0], -1, -1, -1)  # [N, H, W, 2]
        return self._warp(x, grid)

    def negatives(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Noise-mode samples: ``x`` ``[N, C, H, W]`` warped with the backdoor grid plus per-sample
        uniform noise in ``[-1, 1] / H`` (grid units), as in the official code; labels are kept."""
        _check_images(x)
        n, _, h, w = x.shape
        noise = (torch.rand((n, h, w, 2), generator=generator) * 2 - 1) / h  # [N, H, W, 2]
        grid = (self.grid(h, w) + noise).clamp(-1, 1)  # [N, H, W, 2]
        return self._warp(x, grid)


# Ordered-dithering threshold map (4x4 Bayer matrix), values 0..15.
_BAYER4 = ((0, 8, 2, 10), (12, 4, 14, 6), (3, 11, 1, 9), (15, 7, 13, 5))


class BPP(Trigger):
    """Colour-depth squeezing of Wang et al., "BppAttack" (CVPR 2022, arXiv 2205.13383).

    Each pixel is quantised to ``bits`` bits per channel. BppAttack uses Floyd-Steinberg error
    diffusion, which is sequential per pixel; the optional ``dither`` here is ordered (4x4 Bayer)
    dithering, which is vectorised.

    BppAttack also trains on label-kept negative samples: a clean image plus the quantisation
    residual ``q(x') - x'`` of another random training image (:meth:`negatives`), so that the
    residual pattern alone does not mean the target class. The paper makes these residuals
    adversarial; here they are the plain residuals, as in BackdoorBench. They replace
    ``round(negative_ratio * num_poisoned)`` clean training samples. BackdoorBench's ``neg_ratio``
    (0.2) is a share of each *batch*, not per poisoned sample: with ``poison_rate`` 0.1 it matches
    ``negative_ratio = 2``.

    Args:
        bits: bits per channel after squeezing (3).
        dither: use ordered dithering instead of plain rounding.
        negative_ratio: negative samples per poisoned sample (0: none).
    """

    def __init__(self, bits: int = 3, dither: bool = False, negative_ratio: float = 0.0) -> None:
        if not 1 <= bits <= 7:
            raise ValueError(f"bits={bits} must be in 1..7 (8 bits would leave images unchanged)")
        if not negative_ratio >= 0:  # also rejects NaN
            raise ValueError(f"negative_ratio={negative_ratio} must be >= 0 (negatives per poisoned sample, e.g. 2)")
        self.bits = bits
        self.dither = dither
        self.negative_ratio = float(negative_ratio)

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(x)
        return self._squeeze(x)

    def negatives(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``x + (q(x') - x')`` clipped, with ``x'`` another image of ``x`` ``[N, C, H, W]``.

        The donors form one random cycle (a seeded permutation without fixed points), so for
        ``N >= 2`` no image gets its own residual (that would be a poisoned image with a clean
        label); a single image can only use its own.
        """
        _check_images(x)
        n = x.shape[0]
        order = torch.randperm(n, generator=generator)  # [N]
        donor = torch.empty_like(order)
        donor[order] = order.roll(-1)  # donor[order[i]] = order[i + 1]
        other = x[donor]  # [N, C, H, W]
        return (x + (self._squeeze(other) - other)).clamp(0, 1)

    def _squeeze(self, x: Tensor) -> Tensor:
        """Quantise ``x`` ``[N, C, H, W]`` to ``bits`` bits per channel (dithered if set)."""
        levels = 2**self.bits - 1
        scaled = x * levels  # [N, C, H, W]
        if self.dither:
            h, w = x.shape[-2:]
            bayer = (torch.tensor(_BAYER4, dtype=x.dtype) + 0.5) / 16  # [4, 4] thresholds in (0, 1)
            tile = bayer.repeat(math.ceil(h / 4), math.ceil(w / 4))[:h, :w]  # [H, W]
            out = torch.floor(scaled + tile.to(x))
        else:
            out = torch.round(scaled)
        return (out / levels).clamp(0, 1)


def dct_matrix(n: int) -> Tensor:
    """Orthonormal DCT-II matrix ``[n, n]``: ``coeffs = D @ block @ D.T``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


#: RGB -> YUV (BT.601), rows Y, U, V.
_RGB2YUV = ((0.299, 0.587, 0.114), (-0.14713, -0.28886, 0.436), (0.615, -0.51499, -0.10001))


class FTrojan(Trigger):
    """Frequency-domain trigger of Wang et al., "An invisible black-box backdoor attack through
    frequency domain" (FTrojan, ECCV 2022, arXiv 2207.04209).

    The image is converted to YUV, cut into ``window x window`` blocks, and ``magnitude`` is added to
    the chosen DCT coefficients of the U and V channels of every block, then converted back and
    clipped. DCT and colour conversion are linear, so the change before clipping is one fixed
    additive pattern, computed once per image size. One-channel images get the perturbation on their
    only channel.

    Args:
        magnitude: added to each chosen coefficient, in 0-255 pixel units (30).
        frequencies: ``(u, v)`` DCT positions inside a block; None for one mid and one high frequency,
            ``(w/2 - 1, w/2 - 1)`` and ``(w - 1, w - 1)`` (``(15, 15)`` and ``(31, 31)`` for 32-pixel
            blocks, as in the paper).
        window: block size; None for the whole image (must be square then). Must divide H and W.
    """

    def __init__(
        self,
        magnitude: float = 30.0,
        frequencies: list[tuple[int, int]] | None = None,
        window: int | None = None,
    ) -> None:
        if magnitude <= 0:
            raise ValueError(f"magnitude={magnitude} must be positive (pixel units, 0-255)")
        if window is not None and window < 2:
            raise ValueError(f"window={window} must be at least 2 pixels, or None for the whole image")
        if frequencies is not None:
            if not frequencies or any(len(f) != 2 or min(f) < 0 for f in frequencies):
                raise ValueError(f"frequencies={frequencies} must be a non-empty list of (u, v) pairs >= 0")
            frequencies = [(int(u), int(v)) for u, v in frequencies]
        self.magnitude = magnitude
        self.frequencies = frequencies
        self.window = window

    def delta(self, channels: int, height: int, width: int) -> Tensor:
        """The additive pixel-space pattern ``[C, H, W]`` (before clipping)."""
        w = self.window if self.window is not None else height
        if self.window is None and height != width:
            raise ValueError(f"FTrojan with window=None needs square images, got {height}x{width}; set window")
        if height % w or width % w:
            raise ValueError(f"window={w} must divide the image size {height}x{width}")
        freqs = self.frequencies or [(w // 2 - 1, w // 2 - 1), (w - 1, w - 1)]
        if any(u >= w or v >= w for u, v in freqs):
            raise ValueError(f"frequencies={freqs} must lie inside the {w}x{w} DCT block")
        coeffs = torch.zeros(w, w, dtype=torch.float64)
        for u, v in freqs:
            coeffs[u, v] = self.magnitude / 255.0
        d = dct_matrix(w)
        block = d.T @ coeffs @ d  # [w, w] inverse DCT of the perturbation
        plane = block.repeat(height // w, width // w)  # [H, W]
        if channels == 3:
            yuv = torch.stack((torch.zeros_like(plane), plane, plane))  # [3, H, W] perturb U and V
            to_rgb = torch.linalg.inv(torch.tensor(_RGB2YUV, dtype=torch.float64))  # [3, 3]
            out = torch.einsum("cd,dhw->chw", to_rgb, yuv)
        else:
            out = plane.expand(channels, height, width)  # [C, H, W]
        return out.float()

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(x)
        return (x + self.delta(*x.shape[1:]).to(x)).clamp(0, 1)  # [N, C, H, W]


# ---------------------------------------------------------------------------------------------------
# Trained triggers
# ---------------------------------------------------------------------------------------------------


def _train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    """Plain Adam + cross-entropy training of ``model`` on ``(x, y)`` with seeded shuffling."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in _batches(x.shape[0], batch_size, generator):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()


class LabelConsistent(Trigger):
    """Clean-label attack of Turner, Tsipras & Madry, "Label-consistent backdoor attacks"
    (arXiv 1912.02771).

    In :meth:`setup`, a small surrogate CNN is trained on (a seeded subset of) the raw training set,
    then every target-class training image is made hard to classify with an L-inf PGD attack against
    it (seeded random start), and the adversarial copies are stored, keyed by a hash of each clean
    image. :meth:`apply` adds the patch to its inputs, replacing those it recognises (target-class
    training images) with their adversarial copy first; test images get the patch only, as in the
    paper. Surrogate and adversarial copies are cached under ``cache_dir`` keyed by a hash of the
    parameters, the seed and the data. Labels are kept (``attack_mode: clean_label``).

    Args:
        epsilon: L-inf budget of the perturbation, [0, 1] units (16/255 in the paper's strong case).
        pgd_steps: PGD iterations.
        step_size: PGD step, [0, 1] units.
        surrogate_epochs: training epochs of the surrogate.
        surrogate_samples: most training images used to train the surrogate.
        batch_size: batch size of surrogate training and PGD.
        lr: Adam learning rate of the surrogate.
        pattern: the patch, ``"grid"`` (3x3 checker) or ``"square"`` (white), bottom-right.
        patch_size: side of the square patch.
    """

    clean_label = True

    def __init__(
        self,
        epsilon: float = 16 / 255,
        pgd_steps: int = 10,
        step_size: float = 4 / 255,
        surrogate_epochs: int = 5,
        surrogate_samples: int = 10000,
        batch_size: int = 256,
        lr: float = 2e-3,
        pattern: Literal["square", "grid"] = "grid",
        patch_size: int = 3,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon={epsilon} must be in [0, 1] (image units)")
        if pgd_steps < 0:
            raise ValueError(f"pgd_steps={pgd_steps} must be >= 0")
        if step_size <= 0:
            raise ValueError(f"step_size={step_size} must be positive")
        if surrogate_epochs < 0 or surrogate_samples < 1 or batch_size < 1:
            raise ValueError(
                f"surrogate_epochs={surrogate_epochs} must be >= 0, surrogate_samples={surrogate_samples} "
                f"and batch_size={batch_size} >= 1"
            )
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive")
        if pattern not in ("square", "grid"):
            raise ValueError(f"pattern={pattern!r} is unknown; choose 'square' or 'grid'")
        if patch_size < 1:
            raise ValueError(f"patch_size={patch_size} must be at least 1 pixel")
        self.epsilon = epsilon
        self.pgd_steps = pgd_steps
        self.step_size = step_size
        self.surrogate_epochs = surrogate_epochs
        self.surrogate_samples = surrogate_samples
        self.batch_size = batch_size
        self.lr = lr
        self.pattern = pattern
        self.patch_size = patch_size
        self._adversarial: dict[str, Tensor] = {}
        self.surrogate: nn.Module | None = None

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.pop("surrogate", None)
        return out

    @staticmethod
    def image_key(x: Tensor) -> str:
        """Hash of one image ``[C, H, W]`` (how :meth:`apply` recognises training images)."""
        return hashlib.sha1(x.detach().float().contiguous().numpy().tobytes()).hexdigest()

    def pgd(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """Untargeted L-inf PGD on ``x`` ``[N, C, H, W]`` against the surrogate (labels ``y``)."""
        model = _require(self.surrogate, self)
        if self.pgd_steps == 0 or self.epsilon == 0:
            return x.clone()
        start = (torch.rand(x.shape, generator=generator) * 2 - 1) * self.epsilon  # [N, C, H, W]
        adv = (x + start.to(x)).clamp(0, 1)
        for _ in range(self.pgd_steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = adv + self.step_size * grad.sign()
                adv = torch.minimum(torch.maximum(adv, x - self.epsilon), x + self.epsilon).clamp(0, 1)
        return adv.detach()

    def setup(
        self, x: Tensor, y: Tensor, target_label: int, generator: torch.Generator, cache_dir: Path | None = None
    ) -> None:
        _check_images(x)
        seed_state = generator.get_state()
        targets = torch.nonzero(y == target_label).flatten()
        key = _fingerprint(self.describe(), seed_state, target_label, x, y)[:24]
        path = None if cache_dir is None else Path(cache_dir) / f"label_consistent_{key}.pt"
        num_classes = int(y.max()) + 1
        self.surrogate = _SurrogateCNN(x.shape[1], num_classes)
        if path is not None and path.is_file():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            self.surrogate.load_state_dict(blob["surrogate"])
            self.surrogate.eval()
            adv = blob["adversarial"]
        else:
            _init_weights(self.surrogate, generator)
            xs, ys = _subset(x, y, self.surrogate_samples, generator)
            _train_classifier(self.surrogate, xs, ys, self.surrogate_epochs, self.batch_size, self.lr, generator)
            parts = []
            for i in range(0, targets.numel(), self.batch_size):
                idx = targets[i : i + self.batch_size]
                parts.append(self.pgd(x[idx], y[idx], generator))
            adv = torch.cat(parts) if parts else x[:0].clone()  # [T, C, H, W]
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"surrogate": self.surrogate.state_dict(), "adversarial": adv}, path)
        self._adversarial = {self.image_key(x[i]): adv[j] for j, i in enumerate(targets.tolist())}

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(x)
        _require(self.surrogate, self)
        out = x.clone()
        for i in range(x.shape[0]):
            adv = self._adversarial.get(self.image_key(x[i]))
            if adv is not None:
                out[i] = adv.to(x)
        return _stamp(out, _patch_pattern(self.pattern, self.patch_size))  # [N, C, H, W]


class _PatternNet(nn.Module):
    """Input-aware generator: a small conv encoder-decoder, output in [0, 1] (same size as input)."""

    def __init__(self, channels_in: int, channels_out: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels_in, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, channels_out, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, C', H, W]
        out = self.net(x)
        if out.shape[-2:] != x.shape[-2:]:  # odd sizes: match the input exactly
            out = F.interpolate(out, size=x.shape[-2:], mode="nearest")
        return torch.tanh(out) / 2 + 0.5


class InputAware(Trigger):
    """Input-aware dynamic attack of Nguyen & Tran, "Input-aware dynamic backdoor attack"
    (NeurIPS 2020, arXiv 2010.08138).

    Two small generators are trained in :meth:`setup` against a surrogate classifier:

    1. a mask generator ``m(x)`` with the diversity loss ``||x1 - x2|| / ||m(x1) - m(x2)||`` and a norm
       loss ``relu(mean(m) - density)`` (mask density 0.032);
    2. a pattern generator ``g(x)`` trained jointly with the surrogate on clean samples, backdoor
       samples ``x + m(x) (g(x) - x)`` labelled as the target, and cross-trigger samples (the trigger
       of another image, true label), plus ``g``'s diversity loss.

    :meth:`apply` runs ``x' = x + m(x) (g(x) - x)``. The generators (and the surrogate) are cached
    under ``cache_dir`` keyed by a hash of the parameters, the seed and the data. Networks and epochs
    are much smaller than the paper's, so that setup runs in seconds to minutes on a CPU.

    Args:
        density: target mask density (0.032).
        epochs: joint training epochs of the pattern generator and surrogate.
        mask_epochs: training epochs of the mask generator.
        max_samples: most training images used in setup.
        batch_size: setup batch size.
        lr: Adam learning rate.
        backdoor_ratio: share of each batch given the backdoor (0.1 in the paper).
        cross_ratio: share of each batch given a cross trigger (0.1 in the paper).
        lambda_div: weight of the diversity losses (1).
        lambda_norm: weight of the mask norm loss (100).
        max_steps: stop each training phase after this many steps (None: no limit; for fast tests).
    """

    def __init__(
        self,
        density: float = 0.032,
        epochs: int = 3,
        mask_epochs: int = 3,
        max_samples: int = 10000,
        batch_size: int = 128,
        lr: float = 1e-3,
        backdoor_ratio: float = 0.1,
        cross_ratio: float = 0.1,
        lambda_div: float = 1.0,
        lambda_norm: float = 100.0,
        max_steps: int | None = None,
    ) -> None:
        if not 0.0 < density < 1.0:
            raise ValueError(f"density={density} must be in (0, 1)")
        if epochs < 0 or mask_epochs < 0:
            raise ValueError(f"epochs={epochs} and mask_epochs={mask_epochs} must be >= 0")
        if max_samples < 2 or batch_size < 2:
            raise ValueError(f"max_samples={max_samples} and batch_size={batch_size} must be at least 2")
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive")
        if not (0.0 <= backdoor_ratio <= 1.0 and 0.0 <= cross_ratio <= 1.0 and backdoor_ratio + cross_ratio <= 1):
            raise ValueError(
                f"backdoor_ratio={backdoor_ratio} and cross_ratio={cross_ratio} must be in [0, 1] with sum <= 1"
            )
        if lambda_div < 0 or lambda_norm < 0:
            raise ValueError(f"lambda_div={lambda_div} and lambda_norm={lambda_norm} must be >= 0")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps={max_steps} must be >= 1, or None for no limit")
        self.density = density
        self.epochs = epochs
        self.mask_epochs = mask_epochs
        self.max_samples = max_samples
        self.batch_size = batch_size
        self.lr = lr
        self.backdoor_ratio = backdoor_ratio
        self.cross_ratio = cross_ratio
        self.lambda_div = lambda_div
        self.lambda_norm = lambda_norm
        self.max_steps = max_steps
        self.mask_net: nn.Module | None = None
        self.pattern_net: nn.Module | None = None

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.pop("mask_net", None)
        out.pop("pattern_net", None)
        return out

    @staticmethod
    def _diversity(x1: Tensor, x2: Tensor, g1: Tensor, g2: Tensor) -> Tensor:
        """``||x1 - x2|| / ||g1 - g2||`` per sample, averaged (Nguyen & Tran, eq. 3)."""
        dx = ((x1 - x2).flatten(1).pow(2).mean(1) + 1e-8).sqrt()  # [B] (eps: finite gradient at 0)
        dg = ((g1 - g2).flatten(1).pow(2).mean(1) + 1e-8).sqrt()  # [B]
        return (dx / (dg + 1e-3)).mean()

    def _mask(self, x: Tensor) -> Tensor:
        """Mask ``[B, 1, H, W]`` in [0, 1]; values below a small threshold are zeroed."""
        m = _require(self.mask_net, self)(x)
        return m * (m > 0.05)

    def _poison(self, x: Tensor, pattern_src: Tensor) -> Tensor:
        """``x + m(src) (g(src) - x)`` with the trigger of ``pattern_src``."""
        m = self._mask(pattern_src)  # [B, 1, H, W]
        g = _require(self.pattern_net, self)(pattern_src)  # [B, C, H, W]
        return x + m * (g - x)

    def setup(
        self, x: Tensor, y: Tensor, target_label: int, generator: torch.Generator, cache_dir: Path | None = None
    ) -> None:
        _check_images(x)
        c = x.shape[1]
        key = _fingerprint(self.describe(), generator.get_state(), target_label, x, y)[:24]
        path = None if cache_dir is None else Path(cache_dir) / f"input_aware_{key}.pt"
        self.mask_net, self.pattern_net = _PatternNet(c, 1), _PatternNet(c, c)
        if path is not None and path.is_file():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            self.mask_net.load_state_dict(blob["mask_net"])
            self.pattern_net.load_state_dict(blob["pattern_net"])
        else:
            _init_weights(self.mask_net, generator)
            _init_weights(self.pattern_net, generator)
            xs, ys = _subset(x, y, self.max_samples, generator)
            self._train_mask(xs, generator)
            self._train_pattern(xs, ys, target_label, int(y.max()) + 1, generator)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"mask_net": self.mask_net.state_dict(), "pattern_net": self.pattern_net.state_dict()}, path)
        self.mask_net.eval()
        self.pattern_net.eval()

    def _steps(self, n: int, epochs: int, generator: torch.Generator) -> list[Tensor]:
        steps = [idx for _ in range(epochs) for idx in _batches(n, self.batch_size, generator) if idx.numel() > 1]
        return steps if self.max_steps is None else steps[: self.max_steps]

    def _train_mask(self, x: Tensor, generator: torch.Generator) -> None:
        assert self.mask_net is not None
        opt = torch.optim.Adam(self.mask_net.parameters(), lr=self.lr)
        self.mask_net.train()
        for idx in self._steps(x.shape[0], self.mask_epochs, generator):
            x1 = x[idx]  # [B, C, H, W]
            x2 = x1[torch.randperm(x1.shape[0], generator=generator)]
            m1, m2 = self.mask_net(x1), self.mask_net(x2)  # [B, 1, H, W]
            loss = self.lambda_norm * F.relu(m1.mean() - self.density)
            loss = loss + self.lambda_div * self._diversity(x1, x2, m1, m2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.mask_net.eval()

    def _train_pattern(
        self, x: Tensor, y: Tensor, target_label: int, num_classes: int, generator: torch.Generator
    ) -> None:
        assert self.pattern_net is not None and self.mask_net is not None
        surrogate = _SurrogateCNN(x.shape[1], num_classes)
        _init_weights(surrogate, generator)
        opt = torch.optim.Adam([*surrogate.parameters(), *self.pattern_net.parameters()], lr=self.lr)
        self.pattern_net.train()
        surrogate.train()
        for idx in self._steps(x.shape[0], self.epochs, generator):
            xb, yb = x[idx], y[idx].clone()  # [B, C, H, W], [B]
            b = xb.shape[0]
            n_bd, n_cross = int(self.backdoor_ratio * b), int(self.cross_ratio * b)
            other = xb[torch.randperm(b, generator=generator)]
            g1, g2 = self.pattern_net(xb), self.pattern_net(other)
            with torch.no_grad():
                m1, m2 = self._mask(xb), self._mask(other)
            inputs = xb.clone()
            inputs[:n_bd] = xb[:n_bd] + m1[:n_bd] * (g1[:n_bd] - xb[:n_bd])
            yb[:n_bd] = target_label
            sl = slice(n_bd, n_bd + n_cross)
            inputs[sl] = xb[sl] + m2[sl] * (g2[sl] - xb[sl])
            loss = F.cross_entropy(surrogate(inputs), yb)
            loss = loss + self.lambda_div * self._diversity(xb, other, g1, g2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.pattern_net.eval()

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(x)
        with torch.no_grad():
            parts = [self._poison(x[i : i + 512], x[i : i + 512]) for i in range(0, x.shape[0], 512)]
        return torch.cat(parts).clamp(0, 1) if parts else x.clone()  # [N, C, H, W]
