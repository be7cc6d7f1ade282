"""E2ABL loss functions against hand-computed values."""

import math

import torch

from e2abl_lightning.models.e2abl.loss import lga, main_losses, shallow_losses, total_loss


def _ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def test_lga_sign_flip():
    loss = torch.tensor([0.2, 0.5, 1.0])
    assert torch.allclose(lga(loss, 0.5), torch.tensor([-0.2, 0.0, 1.0]))


def test_shallow_losses_per_head_and_sample():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [3.0, 0.0]]])  # [H=2, B=2, K=2]
    targets = torch.tensor([0, 1])
    out = shallow_losses(logits, targets)
    expected = torch.tensor([[_ce([2, 0], 0), _ce([0, 1], 1)], [_ce([0, 0], 0), _ce([3, 0], 1)]])
    assert out.shape == (2, 2)
    assert torch.allclose(out, expected)


def test_main_losses_descend_ascend_recover():
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-10.0, 0.0, 0.0]])
    targets = torch.tensor([0, 0, 0, 0])
    cleanse = torch.tensor([False, True, True, True])
    recovered = torch.tensor([-1, 2, 1, -1])
    train_rec = torch.tensor([False, False, True, False])
    out = main_losses(logits, targets, cleanse, cleanse, recovered, train_rec, ascent_ceiling=5.0)
    ce1 = _ce([1, 0, 0], 0)
    expected = [
        _ce([2, 0, 0], 0),  # trusted: descend
        -ce1,  # cleansed: ascent
        -ce1 + _ce([1, 0, 0], 1),  # cleansed + recovered label
        -5.0,  # CE above the ceiling: clamped, no gradient
    ]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


def test_ascent_stops_at_ceiling():
    logits = torch.tensor([[-10.0, 0.0]], requires_grad=True)
    yes = torch.tensor([True])
    out = main_losses(logits, torch.tensor([0]), yes, yes, torch.tensor([-1]), torch.tensor([False]))
    out.sum().backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_cleansed_without_ascent_has_zero_weight_and_total():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    cleanse = torch.tensor([False, True])
    none = torch.tensor([False, False])
    out = main_losses(logits, torch.tensor([0, 0]), cleanse, none, torch.tensor([-1, -1]), none)
    assert out[1] == 0
    out[1].backward()
    assert torch.count_nonzero(logits.grad) == 0
    shallow = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert torch.isclose(total_loss(out, shallow, 0.5), out.mean() + 0.5 * (2.0 + 2.0))


def test_shallow_losses_keep_small_losses_apart_under_bf16():
    """Trapped samples' losses (1e-3..1e-5) must stay ordered when the logits come out of bf16 autocast."""
    margins = torch.tensor([7.0, 9.0, 11.0])
    logits = torch.stack([margins, torch.zeros(3)], dim=1).to(torch.bfloat16).unsqueeze(0)  # [1, 3, 2]
    loss = shallow_losses(logits, torch.zeros(3, dtype=torch.long))  # [1, 3]
    assert loss.dtype == torch.float32
    assert (loss > 0).all() and loss[0, 0] > loss[0, 1] > loss[0, 2]
