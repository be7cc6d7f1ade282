"""Time-series triggers: static pattern, powerline noise, Fourier cosines, noise blend, time warp, TSBA."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from e2abl_lightning.data.triggers import (
    TSBA,
    FrequencyTrigger,
    NoiseBlend,
    PowerlineNoise,
    StaticPattern,
    TimeWarp,
    Trigger,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_series(n: int = 5, c: int = 3, length: int = 200) -> torch.Tensor:
    return torch.randn(n, c, length, generator=gen(42))  # [N, C, L]


def tiny_tsba(**kwargs) -> TSBA:
    """A TSBA small enough to train in well under a second."""
    return TSBA(**{"epochs": 1, "surrogate_epochs": 1, "batch_size": 8, "width": 4, "kernel_size": 3, **kwargs})


TRIGGERS = [StaticPattern(), PowerlineNoise(), FrequencyTrigger(), NoiseBlend(), TimeWarp(), tiny_tsba()]


def set_up(trigger: Trigger, x: torch.Tensor | None = None, seed: int = 0, cache_dir: Path | None = None) -> Trigger:
    """Run ``trigger.setup`` on a small random training set of ``random_series``' shape (or on ``x``)."""
    x = torch.randn(16, 3, 200, generator=gen(7)) if x is None else x
    y = torch.arange(x.shape[0]) % 2
    trigger.setup(x, y, 0, gen(seed), cache_dir)
    return trigger


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
def test_shape_dtype_and_determinism(trigger: Trigger) -> None:
    set_up(trigger)
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
    set_up(trigger)
    x = random_series()
    whole = trigger.apply(x, gen())
    for i in range(x.shape[0]):
        assert torch.allclose(trigger.apply(x[i : i + 1], gen()), whole[i : i + 1])


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("shape", [(200,), (3, 200), (2, 1, 3, 200)])
def test_non_series_input_raises(trigger: Trigger, shape: tuple[int, ...]) -> None:
    set_up(trigger)
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


@pytest.mark.parametrize(
    "trigger", [t for t in TRIGGERS if type(t).setup is not Trigger.setup], ids=lambda t: type(t).__name__
)
def test_setup_rejects_non_series(trigger: Trigger) -> None:
    with pytest.raises(ValueError, match=r"\[N, C, L\]"):
        trigger.setup(torch.zeros(4, 200), torch.zeros(4, dtype=torch.long), 0, gen())


@pytest.mark.parametrize("factory", [NoiseBlend, TimeWarp, tiny_tsba], ids=lambda f: getattr(f, "__name__", "f"))
def test_apply_before_setup_raises(factory) -> None:
    with pytest.raises(RuntimeError, match=r"apply\(\) needs setup\(\) first"):
        factory().apply(random_series(), gen())


# ---- FrequencyTrigger --------------------------------------------------------------------------


@pytest.mark.parametrize("length", [200, 427, 64])
def test_frequency_changes_exactly_the_chosen_bins(length: int) -> None:
    x = torch.randn(2, 3, length, generator=gen(3))
    trigger = FrequencyTrigger(frequencies=(0.2, 0.3), magnitude=0.25)
    bins = trigger.bins(length)
    assert bins == [max(1, math.floor(f * (length // 2) + 0.5)) for f in (0.2, 0.3)]
    spectrum = torch.fft.rfft((trigger.apply(x, gen()) - x).double(), dim=-1).abs()  # [N, C, L // 2 + 1]
    std = x.double().std(-1, correction=0)  # [N, C]
    for k in bins:
        torch.testing.assert_close(spectrum[..., k], 0.25 * std * length / 2, rtol=1e-4, atol=1e-4)
    others = torch.ones(spectrum.shape[-1], dtype=torch.bool)
    others[bins] = False
    assert spectrum[..., others].amax() < 1e-3 * spectrum[..., bins].amin(), "nothing outside the chosen bins"


def test_frequency_scales_with_the_series_and_skips_constant_channels() -> None:
    x = random_series(n=2, c=2, length=120)
    trigger = FrequencyTrigger()
    delta = trigger.apply(x, gen()) - x
    torch.testing.assert_close(trigger.apply(3 * x + 1, gen()) - (3 * x + 1), 3 * delta, rtol=1e-4, atol=1e-4)
    assert delta.abs().amax() <= len(trigger.frequencies) * trigger.magnitude * x.std(-1).amax() * 1.01
    flat = torch.full((1, 1, 50), 2.0)
    assert torch.equal(trigger.apply(flat, gen()), flat), "zero std: nothing added"


def test_frequency_nyquist_and_bins_too_close() -> None:
    assert FrequencyTrigger(frequencies=(0.5, 1.0)).bins(427) == [107, 213]
    with pytest.raises(ValueError, match="FrequencyTrigger.*spread the frequencies") as info:
        FrequencyTrigger(frequencies=(0.3, 0.35)).apply(torch.randn(1, 1, 10), gen())
    assert "[2, 2]" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"frequencies": ()}, "frequencies"),
        ({"frequencies": (0.0, 0.3)}, "frequencies"),
        ({"frequencies": (1.5,)}, "frequencies"),
        ({"frequencies": (0.2, 0.2)}, "duplicates"),
        ({"magnitude": 0.0}, "magnitude"),
    ],
)
def test_frequency_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        FrequencyTrigger(**kwargs)


# ---- NoiseBlend --------------------------------------------------------------------------------


def test_noise_blend_formula_and_pattern() -> None:
    trigger = set_up(NoiseBlend(alpha=0.2))
    pattern = trigger.pattern  # [C, L]
    assert pattern.shape == (3, 200)
    torch.testing.assert_close(pattern.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(pattern.std(-1, correction=0), torch.ones(3), atol=1e-5, rtol=0)
    x = 2 * random_series() + 5
    noise = x.mean(-1, keepdim=True) + x.std(-1, keepdim=True, correction=0) * pattern
    torch.testing.assert_close(trigger.apply(x, gen()), 0.8 * x + 0.2 * noise)


def test_noise_blend_range_mode_stays_in_range() -> None:
    x = random_series()
    out = set_up(NoiseBlend(alpha=0.5, scale="range")).apply(x, gen())
    assert (out >= x.amin(-1, keepdim=True) - 1e-5).all() and (out <= x.amax(-1, keepdim=True) + 1e-5).all()


def test_noise_blend_seeded() -> None:
    x = random_series()
    a = set_up(NoiseBlend(), seed=1).apply(x, gen())
    b = set_up(NoiseBlend(), seed=1).apply(x, gen())
    c = set_up(NoiseBlend(), seed=2).apply(x, gen())
    assert torch.equal(a, b), "same poison seed, same pattern"
    assert not torch.allclose(a, c), "another seed, another pattern"


def test_noise_blend_shape_mismatch_raises() -> None:
    trigger = set_up(NoiseBlend())  # set up for (3, 200)
    with pytest.raises(
        ValueError, match=r"NoiseBlend was set up for series of shape \(C, L\)=\(3, 200\), got \(3, 150\)"
    ):
        trigger.apply(torch.randn(2, 3, 150), gen())
    with pytest.raises(ValueError, match="set it up again"):
        trigger.apply(torch.randn(2, 1, 200), gen())


def test_noise_blend_smoothing_removes_high_frequencies() -> None:
    def high_share(trigger: NoiseBlend) -> float:
        power = torch.fft.rfft(set_up(trigger).pattern, dim=-1).abs().pow(2)  # [C, L // 2 + 1]
        return (power[:, power.shape[-1] // 2 :].sum() / power.sum()).item()

    assert high_share(NoiseBlend(smoothing=1)) > 0.3, "white noise: about half its power above Nyquist / 2"
    assert high_share(NoiseBlend(smoothing=17)) < 0.05, "a moving average keeps only its sidelobes up there"
    with pytest.raises(ValueError, match="longer than smoothing=17"):
        NoiseBlend(smoothing=17).setup(torch.randn(2, 1, 17), torch.zeros(2, dtype=torch.long), 0, gen())


def test_noise_blend_describe() -> None:
    d = set_up(NoiseBlend()).describe()
    assert d == {"name": "NoiseBlend", "alpha": 0.2, "scale": "std", "smoothing": 17}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"scale": "minmax"}, "scale"),
        ({"smoothing": 0}, "smoothing"),
    ],
)
def test_noise_blend_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        NoiseBlend(**kwargs)


# ---- TimeWarp ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "strength"), [(4, 3.0), (8, 8.0), (16, 40.0)])
def test_time_warp_field_is_monotone_and_in_range(k: int, strength: float) -> None:
    length = 200
    positions = set_up(TimeWarp(k=k, strength=strength)).positions  # [L]
    assert positions.shape == (length,)
    assert (positions.diff() >= 0).all(), "monotone: the warp never reverses time"
    assert positions.min() >= 0 and positions.max() <= length - 1
    shift = positions - torch.arange(length)
    assert shift.abs().max() > 0.5, "not the identity"


def test_time_warp_reads_series_at_the_warped_positions() -> None:
    """Linear interpolation of a ramp is exact: a warped ramp is the field itself."""
    trigger = set_up(TimeWarp())
    ramp = torch.arange(200, dtype=torch.float32).expand(2, 3, 200)
    torch.testing.assert_close(trigger.apply(ramp, gen()), trigger.positions.expand(2, 3, 200))


def test_time_warp_same_seed_same_field() -> None:
    a, b = set_up(TimeWarp(), seed=5), set_up(TimeWarp(), seed=5)
    assert torch.equal(a.positions, b.positions)
    assert not torch.equal(a.positions, set_up(TimeWarp(), seed=6).positions)


def test_time_warp_length_mismatch_raises() -> None:
    trigger = set_up(TimeWarp())
    with pytest.raises(ValueError, match="TimeWarp was set up for series of 200 steps, got 100"):
        trigger.apply(torch.randn(1, 3, 100), gen())
    with pytest.raises(ValueError, match="at least 8 steps"):
        TimeWarp(k=8).setup(torch.randn(2, 1, 5), torch.zeros(2, dtype=torch.long), 0, gen())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"k": 1}, "k="),
        ({"strength": 0.0}, "strength.*identity"),
        ({"strength": -2.0}, "strength"),
        ({"min_step": 0.0}, "min_step"),
        ({"min_step": 1.5}, "min_step"),
    ],
)
def test_time_warp_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TimeWarp(**kwargs)


# ---- TSBA --------------------------------------------------------------------------------------


def two_class_series(n: int = 64, length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy sines (class 0) and noisy square waves (class 1), ``[N, 1, L]``."""
    t = torch.linspace(0, 4 * math.pi, length)
    y = torch.arange(n) % 2
    clean = torch.where(y[:, None] == 0, torch.sin(t), torch.sign(torch.sin(t)))  # [N, L]
    return (clean + 0.2 * torch.randn(n, length, generator=gen(11))).unsqueeze(1), y


def test_tsba_trains_caches_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = two_class_series()
    first = TSBA(epochs=3, surrogate_epochs=2, batch_size=16)
    rng_before, threads = torch.get_rng_state(), torch.get_num_threads()
    first.setup(x, y, 0, gen(3), tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before), "the global RNG is left alone"
    assert torch.get_num_threads() == threads, "the thread count is restored"
    files = list(tmp_path.glob("tsba_*.pt"))
    assert len(files) == 1
    out = first.apply(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype and not torch.equal(out, x)
    assert ((out - x).abs() <= 0.1 * x.abs() + 1e-6).all(), "x' = x (1 + 0.1 g(x)) with |g| <= 1"

    def no_training(*args, **kwargs) -> None:
        raise AssertionError("the cached generator should have been loaded")

    monkeypatch.setattr(TSBA, "_train", no_training)
    second = TSBA(epochs=3, surrogate_epochs=2, batch_size=16)
    second.setup(x, y, 0, gen(3), tmp_path)
    assert torch.equal(second.apply(x, gen()), out)
    assert list(tmp_path.glob("tsba_*.pt")) == files


def test_tsba_deterministic_without_cache_and_seed_dependent() -> None:
    x, y = two_class_series(n=32, length=48)
    a, b, c = tiny_tsba(), tiny_tsba(), tiny_tsba()
    a.setup(x, y, 0, gen(1), None)
    b.setup(x, y, 0, gen(1), None)
    c.setup(x, y, 0, gen(2), None)
    assert torch.equal(a.apply(x, gen()), b.apply(x, gen()))
    assert not torch.equal(a.apply(x, gen()), c.apply(x, gen()))


def test_tsba_amplitude_bound_and_describe() -> None:
    x, y = two_class_series(n=16, length=32)
    trigger = tiny_tsba(amplitude=0.3)
    trigger.setup(x, y, 1, gen(), None)
    delta = trigger.apply(x, gen()) - x
    assert (delta.abs() <= 0.3 * x.abs() + 1e-6).all()
    assert delta.abs().amax() > 0
    d = trigger.describe()
    assert d["name"] == "TSBA" and d["amplitude"] == 0.3 and not any(k.startswith("_") for k in d)
    with pytest.raises(ValueError, match="TSBA was set up for 1-channel series, got 3"):
        trigger.apply(torch.randn(2, 3, 32), gen())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"amplitude": 0.0}, "amplitude"),
        ({"amplitude": 1.5}, "amplitude"),
        ({"epochs": 0}, "epochs"),
        ({"surrogate_epochs": -1}, "surrogate_epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"width": 0}, "width"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"backdoor_ratio": 0.0}, "backdoor_ratio"),
        ({"backdoor_ratio": 1.5}, "backdoor_ratio"),
    ],
)
def test_tsba_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TSBA(**kwargs)
