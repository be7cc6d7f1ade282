"""Time-series triggers: static square-wave pattern and powerline noise."""

from __future__ import annotations

import math

import pytest
import torch

from e2abl_lightning.data.triggers import PowerlineNoise, StaticPattern, Trigger


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_series(n: int = 5, c: int = 3, length: int = 200) -> torch.Tensor:
    return torch.randn(n, c, length, generator=gen(42))  # [N, C, L]


TRIGGERS = [StaticPattern(), PowerlineNoise()]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
def test_shape_dtype_and_determinism(trigger: Trigger) -> None:
    x = random_series()
    x_copy = x.clone()
    a = trigger.apply(x, gen(0))
    b = trigger.apply(x, gen(99))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b), "deterministic: the generator does not matter"
    assert torch.equal(x, x_copy), "the input is not modified in place"
    assert not torch.equal(a, x), "the trigger changes the series"
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
def test_per_sample(trigger: Trigger) -> None:
    """A sample's triggered version does not depend on the rest of the batch."""
    x = random_series()
    whole = trigger.apply(x, gen())
    for i in range(x.shape[0]):
        assert torch.allclose(trigger.apply(x[i : i + 1], gen()), whole[i : i + 1])


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("shape", [(200,), (3, 200), (2, 1, 3, 200)])
def test_non_series_input_raises(trigger: Trigger, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[N, C, L\]"):
        trigger.apply(torch.zeros(shape), gen())


# ---- StaticPattern ---------------------------------------------------------------------------


def test_static_pattern_exact_values() -> None:
    length = 500
    t = torch.arange(length, dtype=torch.float32)
    x = torch.stack([t, -2 * t + 7]).unsqueeze(0)  # [1, 2, 500]: ranges [0, 499] and [-991, 7]
    out = StaticPattern(fraction=0.02, min_steps=4).apply(x, gen())
    steps = 10  # ceil(0.02 * 500) = 10 > min_steps
    expected_wave = torch.tensor([[499.0, 0.0] * 5, [7.0, -991.0] * 5])  # [C, S]: max, min, max, ...
    assert torch.equal(out[0, :, :steps], expected_wave)
    assert torch.equal(out[..., steps:], x[..., steps:]), "only the first steps change"


@pytest.mark.parametrize(("fraction", "min_steps", "length"), [(0.02, 4, 300), (0.05, 3, 101), (0.1, 2, 64)])
def test_static_pattern_length_rule(fraction: float, min_steps: int, length: int) -> None:
    x = torch.randn(2, 1, length, generator=gen(1))
    steps = max(min_steps, math.ceil(fraction * length))
    trigger = StaticPattern(fraction=fraction, min_steps=min_steps)
    assert trigger.num_steps(length) == steps
    out = trigger.apply(x, gen())
    hi, lo = x.amax(-1), x.amin(-1)  # [N, C]
    for s in range(steps):
        assert torch.equal(out[..., s], hi if s % 2 == 0 else lo)
    assert torch.equal(out[..., steps:], x[..., steps:])


def test_static_pattern_min_steps_on_short_series() -> None:
    x = torch.tensor([[[3.0, -1.0, 2.0, 0.5, 1.0, 1.5, 2.5, -0.5, 0.0, 1.0]]])  # [1, 1, 10]
    out = StaticPattern(fraction=0.02, min_steps=4).apply(x, gen())  # ceil(0.2) = 1 < 4
    assert out[0, 0, :4].tolist() == [3.0, -1.0, 3.0, -1.0]
    assert torch.equal(out[..., 4:], x[..., 4:])


def test_static_pattern_half_period_and_end_position() -> None:
    x = torch.arange(20, dtype=torch.float32).view(1, 1, 20)
    out = StaticPattern(fraction=0.3, min_steps=1, half_period=2).apply(x, gen())  # 6 steps
    assert out[0, 0, :6].tolist() == [19.0, 19.0, 0.0, 0.0, 19.0, 19.0]
    out = StaticPattern(fraction=0.2, min_steps=1, position="end").apply(x, gen())  # 4 steps
    assert out[0, 0, -4:].tolist() == [19.0, 0.0, 19.0, 0.0]
    assert torch.equal(out[..., :-4], x[..., :-4])


def test_static_pattern_longer_than_series_raises() -> None:
    with pytest.raises(ValueError, match="StaticPattern") as info:
        StaticPattern(min_steps=8).apply(torch.zeros(2, 1, 5), gen())
    assert "8" in str(info.value) and "5" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"min_steps": 0}, "min_steps"),
        ({"half_period": 0}, "half_period"),
        ({"position": "middle"}, "position"),
    ],
)
def test_static_pattern_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        StaticPattern(**kwargs)


def test_static_pattern_describe() -> None:
    d = StaticPattern(fraction=0.05, min_steps=3).describe()
    assert d == {"name": "StaticPattern", "fraction": 0.05, "min_steps": 3, "half_period": 1, "position": "start"}


# ---- PowerlineNoise ----------------------------------------------------------------------------


def test_powerline_exact_values() -> None:
    # period 4: t = k * pi / 2, sin(t) = [0, 1, 0, -1], sin(3t) = [0, -1, 0, 1]; normalised wave [0, 1, 0, -1]
    x = torch.tensor([[[3.0, -1.0, 0.0, 1.0, 2.0, 0.0, 1.0, 0.0], [5.0] * 8]])  # [1, 2, 8]: spans 4 and 0
    out = PowerlineNoise(period=4, amplitude=0.1, harmonic=0.3).apply(x, gen())
    added = torch.tensor([0.0, 0.4, 0.0, -0.4] * 2)
    assert torch.allclose(out[0, 0], x[0, 0] + added, atol=1e-6)
    assert torch.equal(out[0, 1], x[0, 1]), "a constant channel has zero range: nothing added"


def test_powerline_scales_with_range_and_is_periodic() -> None:
    x = random_series(n=2, c=1, length=120)
    trigger = PowerlineNoise(period=10, amplitude=0.1)
    delta = trigger.apply(x, gen()) - x  # [N, C, L]
    span = x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)
    assert torch.allclose(delta.abs().amax(-1, keepdim=True), 0.1 * span, rtol=1e-5)
    assert torch.allclose(delta[..., :10], delta[..., 10:20], atol=1e-5)
    assert torch.allclose(trigger.apply(3 * x, gen()) - 3 * x, 3 * delta, atol=1e-5)


def test_powerline_waveform_unit_peak() -> None:
    wave = PowerlineNoise(period=12).waveform(48)
    assert wave.shape == (48,)
    assert torch.isclose(wave.abs().max(), torch.tensor(1.0))


def test_powerline_period_longer_than_series_raises() -> None:
    with pytest.raises(ValueError, match="PowerlineNoise") as info:
        PowerlineNoise(period=50).apply(torch.zeros(1, 1, 20), gen())
    assert "50" in str(info.value) and "20" in str(info.value)


@pytest.mark.parametrize(("kwargs", "name"), [({"period": 1}, "period"), ({"amplitude": 0.0}, "amplitude")])
def test_powerline_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PowerlineNoise(**kwargs)
