"""Image triggers: shape and range, determinism under the poison seed, only selected samples change."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from e2abl_lightning.data.poison import PoisonedDataset, select_poison_indices
from e2abl_lightning.data.triggers import (
    BPP,
    SIG,
    BadNets,
    Blend,
    FTrojan,
    InputAware,
    LabelConsistent,
    Trigger,
    Trojan,
    WaNet,
)
from e2abl_lightning.data.triggers.image import GRID_PATTERN, dct_matrix

NUM_CLASSES = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int = 40, c: int = 3, size: int = 16, seed: int = 0) -> Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))  # [N, C, H, W]


def labels(n: int = 40) -> Tensor:
    return torch.arange(n) % NUM_CLASSES  # [N]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_label_consistent() -> LabelConsistent:
    return LabelConsistent(pgd_steps=2, surrogate_epochs=1, surrogate_samples=40, batch_size=16)


def tiny_input_aware() -> InputAware:
    return InputAware(epochs=1, mask_epochs=1, max_samples=40, batch_size=8, max_steps=2)


FACTORIES = {
    "badnets": BadNets,
    "badnets_grid": lambda: BadNets(pattern="grid"),
    "blend": Blend,
    "sig": SIG,
    "trojan": Trojan,
    "wanet": WaNet,
    "bpp": BPP,
    "bpp_dither": lambda: BPP(dither=True),
    "ftrojan": FTrojan,
    "label_consistent": tiny_label_consistent,
    "input_aware": tiny_input_aware,
}


def set_up(name: str, x: Tensor, seed: int = 0, cache_dir: Path | None = None) -> Trigger:
    trigger = FACTORIES[name]()
    trigger.setup(x, labels(x.shape[0]), 0, gen(seed), cache_dir)
    return trigger


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_shape_range_and_change(name: str, channels: int) -> None:
    x = images(c=channels)
    out = set_up(name, x).apply(x, gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x), f"{name} left the images unchanged"
    assert torch.equal(x, images(c=channels)), f"{name} modified its input in place"


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_deterministic_under_the_poison_seed(name: str) -> None:
    x = images()
    a = set_up(name, x, seed=3).apply(x, gen(5))
    b = set_up(name, x, seed=3).apply(x, gen(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["blend", "trojan", "wanet"])
def test_seeded_patterns_depend_on_the_seed(name: str) -> None:
    x = images()
    assert not torch.equal(set_up(name, x, seed=0).apply(x, gen()), set_up(name, x, seed=1).apply(x, gen()))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_only_selected_samples_change_and_labels_follow_the_mode(name: str) -> None:
    x, y = images(), labels()
    trigger = set_up(name, x)
    mode = "clean_label" if trigger.clean_label else "all_to_one"
    idx = select_poison_indices(y, 0.1, 0, mode, seed=0)
    ds = PoisonedDataset.build(x, y, idx, trigger, mode, 0, NUM_CLASSES, gen(1))
    changed = (ds.inputs != x).flatten(1).any(dim=1)  # [N]
    assert not changed[~ds.poisoned].any()
    assert torch.equal(ds.poisoned.nonzero().flatten(), idx)
    if trigger.clean_label:
        assert torch.equal(ds.targets, y)
        assert (y[idx] == 0).all()
    else:
        assert (ds.targets[idx] == 0).all()


@pytest.mark.parametrize("name", ["sig", "label_consistent"])
def test_clean_label_attacks_are_marked(name: str) -> None:
    assert FACTORIES[name]().clean_label
    assert not BadNets().clean_label


def test_badnets_patterns() -> None:
    x = torch.full((2, 3, 8, 8), 0.5)
    square = BadNets().apply(x, gen())
    assert (square[..., -3:, -3:] == 1).all() and (square[..., :-3, :] == 0.5).all()
    grid = BadNets(pattern="grid").apply(x, gen())
    assert torch.equal(grid[0, 1, -3:, -3:], torch.tensor(GRID_PATTERN))


def test_blend_formula_and_user_image(tmp_path: Path) -> None:
    from PIL import Image

    x = images(n=4)
    trigger = set_up("blend", x)
    pattern = trigger._pattern
    assert pattern is not None
    torch.testing.assert_close(trigger.apply(x, gen()), 0.8 * x + 0.2 * pattern)
    path = tmp_path / "t.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    user = Blend(alpha=0.5, image_path=str(path))
    user.setup(x, labels(4), 0, gen())
    out = user.apply(torch.zeros_like(x), gen())
    torch.testing.assert_close(out[:, 0], torch.full_like(out[:, 0], 0.5))
    strict = Blend(image_path=str(path), resize=False)
    with pytest.raises(ValueError, match="8x8 but the data is 16x16"):
        strict.setup(x, labels(4), 0, gen())


def test_apply_before_setup_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="needs setup"):
        Blend().apply(images(), gen())


def test_sig_is_the_sinusoid() -> None:
    x = torch.full((1, 1, 4, 12), 0.5)
    out = SIG(delta=20, frequency=6).apply(x, gen())
    j = torch.arange(12, dtype=torch.float32)
    expected = 0.5 + 20 / 255 * torch.sin(2 * torch.pi * j * 6 / 12)
    torch.testing.assert_close(out[0, 0, 2], expected)


def test_sig_test_delta_strengthens_only_the_test_signal() -> None:
    x = torch.full((1, 1, 4, 12), 0.5)
    sig = SIG(delta=20, frequency=6, test_delta=60)
    j = torch.arange(12, dtype=torch.float32)
    wave = torch.sin(2 * torch.pi * j * 6 / 12)
    torch.testing.assert_close(sig.apply(x, gen())[0, 0, 1], 0.5 + 20 / 255 * wave)
    torch.testing.assert_close(sig.apply_test(x, gen())[0, 0, 1], 0.5 + 60 / 255 * wave)
    torch.testing.assert_close(SIG(delta=20).apply_test(x, gen()), SIG(delta=20).apply(x, gen()))


def test_bpp_has_eight_levels() -> None:
    out = BPP(bits=3).apply(images(), gen())
    assert torch.unique(torch.round(out * 7)).numel() <= 8
    torch.testing.assert_close(out * 7, torch.round(out * 7))


def test_ftrojan_changes_only_the_chosen_dct_coefficients() -> None:
    x = torch.full((1, 1, 16, 16), 0.5)
    out = FTrojan(magnitude=30, frequencies=[(3, 5)]).apply(x, gen())
    d = dct_matrix(16).float()
    coeffs = d @ (out - x)[0, 0] @ d.T  # [16, 16]
    expected = torch.zeros(16, 16)
    expected[3, 5] = 30 / 255
    torch.testing.assert_close(coeffs, expected, atol=1e-5, rtol=0)


def test_ftrojan_rgb_leaves_luma_unchanged() -> None:
    x = torch.full((1, 3, 16, 16), 0.5)
    delta = FTrojan().apply(x, gen()) - x  # [1, 3, 16, 16]
    luma = 0.299 * delta[:, 0] + 0.587 * delta[:, 1] + 0.114 * delta[:, 2]
    assert luma.abs().max() < 1e-5 and delta.abs().max() > 1e-3


def test_wanet_is_a_small_smooth_warp() -> None:
    x = images(n=8, size=32)
    trigger = set_up("wanet", x)
    assert trigger.field.shape == (1, 32, 32, 2)
    out = trigger.apply(x, gen())
    assert (out - x).abs().mean() < 0.2
    noisy = trigger.negatives(x, gen())
    assert noisy.shape == x.shape and not torch.equal(noisy, out)


def test_wanet_noise_mode_negatives() -> None:
    x = images(n=1, size=32).expand(6, -1, -1, -1).clone()  # six copies of one image
    trigger = WaNet(noise_mode=True)
    trigger.setup(x, labels(6), 0, gen())
    assert trigger.negative_ratio == 2.0 and WaNet(noise_mode=True, cross_ratio=0.5).negative_ratio == 0.5
    noisy = trigger.negatives(x, gen(3))
    assert noisy.shape == x.shape and noisy.dtype == x.dtype
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert not torch.equal(noisy[0], noisy[1]), "the grid noise must differ per sample"
    assert torch.equal(noisy, trigger.negatives(x, gen(3)))
    assert not torch.equal(noisy, trigger.negatives(x, gen(4)))
    warped = trigger.apply(x, gen(3))
    assert not torch.equal(noisy, warped)
    assert WaNet().negative_ratio == 0.0 and WaNet(cross_ratio=5.0).negative_ratio == 0.0


def test_bpp_negatives_add_another_images_residual() -> None:
    x = images(n=8)
    trigger = BPP(bits=3, negative_ratio=0.2)
    assert trigger.negative_ratio == 0.2 and BPP().negative_ratio == 0.0
    neg = trigger.negatives(x, gen(1))
    assert neg.shape == x.shape and neg.min() >= 0 and neg.max() <= 1
    assert torch.equal(neg, trigger.negatives(x, gen(1)))
    assert not torch.equal(neg, x) and not torch.equal(neg, trigger.apply(x, gen()))
    residual = trigger.apply(x, gen()) - x  # [N, C, H, W]
    for i in range(8):  # each sample carries the residual of exactly one other image
        donors = [j for j in range(8) if torch.allclose(neg[i], (x[i] + residual[j]).clamp(0, 1))]
        assert donors and i not in donors
    pair = images(n=2, size=4)  # two images: the donor of each is the other one
    out = trigger.negatives(pair, gen(5))
    q = torch.round(pair * 7) / 7
    expected = (pair + (q.flip(0) - pair.flip(0))).clamp(0, 1)
    torch.testing.assert_close(out, expected)


def test_bpp_dithered_negatives_use_the_dithered_residual() -> None:
    pair = images(n=2, size=8)
    trigger = BPP(dither=True)
    expected = (pair + (trigger.apply(pair, gen()) - pair).flip(0)).clamp(0, 1)
    torch.testing.assert_close(trigger.negatives(pair, gen(2)), expected)


def test_triggers_without_negatives_say_so() -> None:
    assert BadNets().negative_ratio == 0.0
    with pytest.raises(NotImplementedError, match="BadNets makes no negative samples"):
        BadNets().negatives(images(), gen())


_FIELD_SCRIPT = """
import hashlib, torch
from e2abl_lightning.data.triggers import WaNet
t = WaNet()
t.setup(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), 0, torch.Generator().manual_seed(7))
print(hashlib.sha256(t.field.numpy().tobytes()).hexdigest())
"""


def test_wanet_field_is_identical_across_processes() -> None:
    runs = [
        subprocess.run([sys.executable, "-c", _FIELD_SCRIPT], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 64


def test_label_consistent_uses_adversarial_copies_only_for_target_training_images(tmp_path: Path) -> None:
    x, y = images(), labels()
    trigger = set_up("label_consistent", x, cache_dir=tmp_path)
    target = (y == 0).nonzero().flatten()
    out = trigger.apply(x[target], gen())  # [T, C, H, W]
    body = (out - x[target])[..., :-3, :]  # away from the patch
    assert body.abs().amax() <= trigger.epsilon + 1e-6 and body.abs().amax() > 0
    fresh = images(seed=9)[:4]  # unseen images (test set): patch only
    torch.testing.assert_close(trigger.apply(fresh, gen())[..., :-3, :], fresh[..., :-3, :])
    assert len(list(tmp_path.glob("label_consistent_*.pt"))) == 1
    cached = set_up("label_consistent", x, cache_dir=tmp_path)  # loaded from the cache
    assert torch.equal(cached.apply(x[target], gen()), out)


def test_input_aware_caches_its_generators(tmp_path: Path) -> None:
    x = images()
    first = set_up("input_aware", x, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("input_aware_*.pt"))) == 1
    second = set_up("input_aware", x, cache_dir=tmp_path)
    assert torch.equal(first.apply(x, gen()), second.apply(x, gen()))
    assert "mask_net" not in first.describe()


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: BadNets(pattern="cross"), "pattern='cross'"),  # type: ignore[arg-type]
        (lambda: BadNets(size=0), "size=0"),
        (lambda: Blend(alpha=1.5), "alpha=1.5"),
        (lambda: Blend(image_path="/no/such.png"), "image_path="),
        (lambda: SIG(delta=0), "delta=0"),
        (lambda: SIG(test_delta=300), "test_delta=300"),
        (lambda: Trojan(amplitude=2.0), "amplitude=2.0"),
        (lambda: WaNet(k=1), "k=1"),
        (lambda: WaNet(cross_ratio=-1.0), r"cross_ratio=-1.0 must be >= 0"),
        (lambda: BPP(bits=8), "bits=8"),
        (lambda: BPP(negative_ratio=-0.2), r"negative_ratio=-0.2 must be >= 0"),
        (lambda: FTrojan(magnitude=-1), "magnitude=-1"),
        (lambda: FTrojan(frequencies=[]), "frequencies="),
        (lambda: LabelConsistent(epsilon=2.0), "epsilon=2.0"),
        (lambda: InputAware(density=0.0), "density=0.0"),
    ],
)
def test_invalid_arguments_are_clear_errors(factory: Callable[[], Trigger], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_wrong_input_rank_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        BadNets().apply(torch.rand(2, 3, 16), gen())


@pytest.mark.parametrize("name", ["badnets", "blend", "wanet", "bpp", "sig", "ftrojan", "trojan"])
def test_fixed_triggers_treat_each_image_alone(name: str) -> None:
    """A fixed trigger is one batched transform: an image's output does not depend on its batch-mates, so
    poisoning in chunks equals poisoning at once (their speed is timed by ``python -m
    e2abl_lightning.bench.poisoning``, not here)."""
    x = images(n=64, size=32)
    trigger = set_up(name, x)
    whole = trigger.apply(x, gen())
    parts = torch.cat([trigger.apply(x[:24], gen()), trigger.apply(x[24:], gen())])
    assert whole.shape == x.shape and not torch.equal(whole, x)
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=0)


def test_gallery_writes_one_png(tmp_path: Path) -> None:
    from e2abl_lightning.data.datasets.images import ImageSplits
    from e2abl_lightning.data.gallery import poisoned_examples, write_gallery

    x, y = images(n=20), labels(20)
    data = ImageSplits(x, y, x, y, [str(i) for i in range(NUM_CLASSES)], "generated")
    rows = poisoned_examples(data, {"BadNets": BadNets(), "SIG": SIG(), "WaNet": WaNet()})
    assert [name for name, _, _ in rows] == ["BadNets", "SIG", "WaNet"]
    assert int(torch.nonzero((x == rows[1][1]).flatten(1).all(1)).flatten()[0]) % NUM_CLASSES == 0  # SIG: target image
    out = write_gallery(rows, tmp_path / "g.png", "generated")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
