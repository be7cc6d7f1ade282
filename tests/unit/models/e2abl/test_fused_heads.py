"""The fused shallow heads against the separate heads they replace: outputs, gradients, checkpoint
keys, and the isolation decisions of a short training on a fixed batch stream."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from e2abl_lightning.models.backbones import FCN
from e2abl_lightning.models.e2abl import FusedShallowHeads, IsolationPolicy, IsolationState, ShallowHead, TwoHeadNet
from e2abl_lightning.models.e2abl.loss import cleansing_losses, shallow_losses, total_loss
from e2abl_lightning.models.e2abl.policy import margins, pseudo_labels

TINY_FCN = partial(FCN, layers=(8, 16, 8))


def _separate(poolings: tuple[str, ...], dims: int, c: int = 6, k: int = 4, hidden: int = 5) -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList(ShallowHead(c, k, p, hidden, dims) for p in poolings)


def _stacked(heads: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([h(x) for h in heads])  # the separate heads' [H, B, K]


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("poolings", [("max", "avg"), ("avg", "max", "avg"), ("max",), ("avg", "avg")])
def test_fused_heads_match_separate_heads(dims: int, poolings: tuple[str, ...]) -> None:
    heads = _separate(poolings, dims)
    fused = FusedShallowHeads.from_heads(list(heads))
    assert len(fused) == len(poolings)
    x = torch.randn(7, 6, *([9] * dims), requires_grad=True)
    for train in (True, False):  # batch statistics, then the running ones both updated
        heads.train(train)
        fused.train(train)
        ref, out = _stacked(heads, x), fused(x)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    ref_grads = torch.autograd.grad(_stacked(heads, x).square().sum(), [x, *heads.parameters()])
    grads = torch.autograd.grad(fused(x).square().sum(), [x, *fused.parameters()])
    torch.testing.assert_close(grads[0], ref_grads[0], atol=1e-5, rtol=1e-5)  # into the features
    grad_of = dict(zip(heads.parameters(), ref_grads[1:], strict=True))
    fused_grads = dict(zip(dict(fused.named_parameters()), grads[1:], strict=True))
    per_head = [{name: grad_of[p] for name, p in head.named_parameters()} for head in heads]
    expected = {
        "conv.weight": torch.cat([g["body.0.weight"] for g in per_head]),
        "norm.weight": torch.cat([g["body.1.weight"] for g in per_head]),
        "norm.bias": torch.cat([g["body.1.bias"] for g in per_head]),
        "weight": torch.stack([g["fc.weight"] for g in per_head]),
        "bias": torch.stack([g["fc.bias"] for g in per_head]),
    }
    for name, grad in expected.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_checkpoint_of_separate_heads_loads_into_fused_heads() -> None:
    net = TwoHeadNet(TINY_FCN((2, 16), 3), 3, (2, 16), hidden=4)
    heads = _separate(("max", "avg"), 1, c=8, k=3, hidden=4)
    x = torch.randn(5, 8, 16)
    heads.train()
    _stacked(heads, x)  # non-trivial running statistics
    old = {k: v for k, v in net.state_dict().items() if not k.startswith("heads.")}
    old.update({f"heads.{k}": v for k, v in heads.state_dict().items()})  # the keys before the fusion
    net.load_state_dict(old)
    heads.eval()
    net.heads.eval()
    torch.testing.assert_close(net.heads(x), _stacked(heads, x))
    assert int(net.heads.norm.num_batches_tracked) == 1


class _SeparateHeadNet(TwoHeadNet):
    """The two-head net as it was before the fusion: one module per shallow head, a loop in forward."""

    def __init__(self, fused: TwoHeadNet, separate: nn.ModuleList) -> None:
        nn.Module.__init__(self)
        self.backbone = copy.deepcopy(fused.backbone)
        self.shallow_layer, self.grad_to_stem = fused.shallow_layer, fused.grad_to_stem
        self._features, self._stop_mask, self._capture = None, None, False
        dict(self.backbone.named_modules())[self.shallow_layer]._forward_hooks.clear()
        dict(self.backbone.named_modules())[self.shallow_layer].register_forward_hook(self._hook)
        self.separate = separate

    def forward(self, x: torch.Tensor, stop_grad_mask: torch.Tensor | None = None):  # type: ignore[override]
        self._capture, self._stop_mask = True, stop_grad_mask
        try:
            main = self.backbone(x)
            features = self._features
        finally:
            self._capture, self._stop_mask, self._features = False, None, None
        if not self.grad_to_stem:
            features = features.detach()
        return main, torch.stack([head(features) for head in self.separate])


def _train(net: nn.Module, stream: list, n: int, k: int, epochs: int) -> IsolationState:
    """E2ABL's step (per-sample losses, cleansing of the isolated, state bank) on a fixed batch stream."""
    state = IsolationState(n, k, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for epoch in range(epochs):
        state.reset_accumulators()
        for x, y, index in stream:
            main, shallow = net(x)
            pseudo, confidence = pseudo_labels(state.pred_ema[index], y)
            per_main = cleansing_losses(main, y, state.isolated[index], pseudo, confidence)
            optimizer.zero_grad()
            total_loss(per_main, shallow_losses(shallow, y)).backward()
            optimizer.step()
            logits = torch.cat([shallow.detach(), main.detach().unsqueeze(0)])
            state.accumulate(index, margins(logits, y), main.detach().softmax(dim=1), y)
        state.decide(epoch, IsolationPolicy())
    return state


def test_fused_heads_take_the_same_isolation_decisions_as_separate_heads() -> None:
    n, k, length, b = 60, 3, 24, 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, length, generator=g)
    y = torch.arange(n) % k
    x[:6, :, :4] += 4.0  # a static trigger on six samples relabelled to class 0
    y[:6] = 0
    stream = [(x[i : i + b], y[i : i + b], torch.arange(i, i + b)) for i in range(0, n, b)]

    torch.manual_seed(0)
    fused = TwoHeadNet(TINY_FCN((2, length), k), k, (2, length), hidden=8)
    torch.manual_seed(1)  # the separate heads, then the fused net given exactly their weights
    separate = nn.ModuleList(ShallowHead(8, k, p, 8, 1) for p in ("max", "avg"))
    fused.heads.load_state_dict(FusedShallowHeads.from_heads(list(separate)).state_dict())
    reference = _SeparateHeadNet(fused, separate)

    class _Pair(nn.Module):  # the fused net's output as the reference's (main, shallow) pair
        def __init__(self, net: TwoHeadNet) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor):
            return tuple(self.net(x))

    ours = _train(_Pair(fused), stream, n, k, epochs=5)
    theirs = _train(reference, stream, n, k, epochs=5)
    assert int(ours.epochs_decided) == 5
    for name in ("flagged", "isolated", "recovered", "flag_count", "first_flagged", "view", "suspected_target"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    torch.testing.assert_close(ours.score, theirs.score, atol=1e-4, rtol=1e-4, equal_nan=True)
    torch.testing.assert_close(ours.pred_ema, theirs.pred_ema, atol=1e-4, rtol=1e-4)
