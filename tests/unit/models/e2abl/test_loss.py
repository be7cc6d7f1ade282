"""E2ABL loss functions against hand-computed values."""

import math

import torch

from e2abl_lightning.models.e2abl.loss import cleansing_losses, lga, shallow_losses, total_loss, trusted_losses


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


def test_cleansing_losses_trust_unlearn_and_recover():
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    targets = torch.tensor([0, 0, 0])
    isolated = torch.tensor([False, True, True])
    pseudo = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    confidence = torch.tensor([1.0, 0.0, 0.5])
    out = cleansing_losses(logits, targets, isolated, pseudo, confidence)
    p0 = math.exp(1) / (math.exp(1) + 2)
    expected = [
        _ce([2, 0, 0], 0),  # trusted: the given label
        -math.log(1 - p0),  # isolated, no confident label: the complementary loss alone
        -math.log(1 - p0) + 0.5 * (0.5 * _ce([1, 0, 0], 1) + 0.5 * _ce([1, 0, 0], 2)),
    ]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


def test_complementary_gradient_on_the_given_logit_is_its_probability():
    logits = torch.tensor([[3.0, 0.0, -1.0], [-8.0, 0.0, 0.0]], requires_grad=True)
    yes = torch.tensor([True, True])
    out = cleansing_losses(logits, torch.tensor([0, 0]), yes, torch.zeros(2, 3), torch.zeros(2))
    out.sum().backward()
    p = logits.detach().softmax(dim=1)[:, 0]
    # strongest on a fitted poison, vanishing once it is unlearned: no ceiling needed
    torch.testing.assert_close(logits.grad[:, 0], p, atol=1e-5, rtol=1e-5)
    assert float(logits.grad[1].abs().max()) < 1e-3


def test_total_loss_adds_each_heads_mean():
    main = torch.tensor([1.0, 3.0])
    shallow = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert torch.isclose(total_loss(main, shallow), torch.tensor(2.0 + 2.0 + 2.0))


def test_shallow_losses_keep_small_losses_apart_under_bf16():
    """Trapped samples' losses (1e-3..1e-5) must stay ordered when the logits come out of bf16 autocast."""
    margins = torch.tensor([7.0, 9.0, 11.0])
    logits = torch.stack([margins, torch.zeros(3)], dim=1).to(torch.bfloat16).unsqueeze(0)  # [1, 3, 2]
    loss = shallow_losses(logits, torch.zeros(3, dtype=torch.long))  # [1, 3]
    assert loss.dtype == torch.float32
    assert (loss > 0).all() and loss[0, 0] > loss[0, 1] > loss[0, 2]


def test_trusted_losses_are_what_cleansing_gives_samples_that_are_not_isolated():
    """The step skips the cleansing terms while nothing is isolated: same values, same gradients."""
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    pseudo = torch.full((6, 4), 0.25)
    full = cleansing_losses(logits, targets, torch.zeros(6, dtype=torch.bool), pseudo, torch.ones(6))
    (grad_full,) = torch.autograd.grad(full.sum(), logits)
    short = trusted_losses(logits, targets)
    (grad_short,) = torch.autograd.grad(short.sum(), logits)
    assert torch.equal(full, short) and torch.equal(grad_full, grad_short)
    torch.testing.assert_close(short, torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
