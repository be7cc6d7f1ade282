"""The two-head network of E2ABL (Jiang et al., arXiv 2401.03215): no Lightning here.

A forward hook on a named shallow layer of any backbone hands that layer's output to small shallow
heads; the backbone runs unchanged, so tsai or torchvision models need no surgery. The heads run as one
fused module (:class:`FusedShallowHeads`), equivalent to one :class:`ShallowHead` each.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

Pooling = Literal["max", "avg"]


class TwoHeadOutput(NamedTuple):
    """Logits of both heads."""

    main: Tensor  # [B, K]
    shallow: Tensor  # [H, B, K], one slice per shallow head


class ShallowHead(nn.Module):
    """Conv -> BN -> ReLU -> global pooling -> linear, for 1-d or 2-d feature maps.

    Max pooling catches local triggers (patches, short patterns); average pooling catches global ones
    (blends, sinusoids). See the method README.
    """

    def __init__(self, in_channels: int, num_classes: int, pooling: Pooling, hidden: int, spatial_dims: int) -> None:
        super().__init__()
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling={pooling!r} must be 'max' or 'avg'")
        if spatial_dims not in (1, 2):
            raise ValueError(f"shallow features must be [B, C, L] or [B, C, H, W], got {spatial_dims} spatial dims")
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if spatial_dims == 1 else nn.BatchNorm2d
        pool = {
            (1, "max"): nn.AdaptiveMaxPool1d,
            (1, "avg"): nn.AdaptiveAvgPool1d,
            (2, "max"): nn.AdaptiveMaxPool2d,
            (2, "avg"): nn.AdaptiveAvgPool2d,
        }[(spatial_dims, pooling)]
        self.pooling = pooling
        self.body = nn.Sequential(
            conv(in_channels, hidden, 3, padding=1, bias=False), norm(hidden), nn.ReLU(), pool(1), nn.Flatten()
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, features: Tensor) -> Tensor:  # [B, C, *S] -> [B, K]
        return self.fc(self.body(features))


class FusedShallowHeads(nn.Module):
    """Every shallow head in one module: one conv whose output channels hold each head's ``hidden``
    channels in turn, one BN (per channel, so the same as one BN per head), ReLU, each head's global
    pooling, and one batched linear. Equivalent to one :class:`ShallowHead` per entry of ``poolings``
    (:meth:`from_heads` copies their weights); one kernel per layer instead of one per head.

    Checkpoints of the separate heads (keys ``<h>.body.*``, ``<h>.fc.*``) are mapped on load.
    """

    def __init__(
        self, in_channels: int, num_classes: int, poolings: tuple[Pooling, ...], hidden: int, spatial_dims: int
    ) -> None:
        super().__init__()
        if not poolings:
            raise ValueError("poolings must name at least one shallow head ('max' and/or 'avg')")
        for pooling in poolings:
            if pooling not in ("max", "avg"):
                raise ValueError(f"pooling={pooling!r} must be 'max' or 'avg'")
        if spatial_dims not in (1, 2):
            raise ValueError(f"shallow features must be [B, C, L] or [B, C, H, W], got {spatial_dims} spatial dims")
        h = len(poolings)
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if spatial_dims == 1 else nn.BatchNorm2d
        self.poolings = tuple(poolings)
        self.hidden = hidden
        self.conv = conv(in_channels, h * hidden, 3, padding=1, bias=False)
        self.norm = norm(h * hidden)
        self.weight = nn.Parameter(torch.empty(h, num_classes, hidden))  # [H, K, hidden]
        self.bias = nn.Parameter(torch.empty(h, num_classes))  # [H, K]
        bound = 1 / hidden**0.5  # nn.Linear's default initialisation
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        self._runs = [(a, b, poolings[a]) for a, b in _runs(poolings)]  # (first head, end, pooling)

    @classmethod
    def from_heads(cls, heads: list[ShallowHead]) -> FusedShallowHeads:
        """The fused module holding exactly the weights (and BN statistics) of separate ``heads``."""
        first = heads[0]
        conv = first.body[0]
        fused = cls(
            conv.in_channels,
            first.fc.out_features,
            tuple(h.pooling for h in heads),
            conv.out_channels,
            conv.weight.ndim - 2,
        )
        fused.load_state_dict(_fuse_head_states([h.state_dict() for h in heads]))
        return fused

    def __len__(self) -> int:
        return len(self.poolings)

    def forward(self, features: Tensor) -> Tensor:  # [B, C, *S] -> [H, B, K]
        x = torch.relu(self.norm(self.conv(features)))  # [B, H * hidden, *S]
        x = x.flatten(2).unflatten(1, (len(self.poolings), self.hidden))  # [B, H, hidden, S]
        # one reduction per run of heads with the same pooling (one max, one mean for the default heads)
        pooled = [x[:, a:b].max(dim=-1).values if p == "max" else x[:, a:b].mean(dim=-1) for a, b, p in self._runs]
        pooled = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)  # [B, H, hidden]
        return torch.baddbmm(self.bias.unsqueeze(1), pooled.transpose(0, 1), self.weight.transpose(1, 2))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        old = sorted({k[len(prefix) :].split(".", 1)[0] for k in state_dict if k.startswith(prefix)})
        heads = [h for h in old if h.isdigit()]
        if heads:  # a checkpoint of the separate heads: fuse its keys
            per_head = [
                {
                    k[len(f"{prefix}{h}.") :]: state_dict.pop(k)
                    for k in list(state_dict)
                    if k.startswith(f"{prefix}{h}.")
                }
                for h in sorted(heads, key=int)
            ]
            state_dict.update({prefix + k: v for k, v in _fuse_head_states(per_head).items()})
        super()._load_from_state_dict(state_dict, prefix, *args)


def _runs(poolings: tuple[str, ...]) -> list[tuple[int, int]]:
    """``(start, end)`` of every run of consecutive equal entries."""
    starts = [i for i in range(len(poolings)) if i == 0 or poolings[i] != poolings[i - 1]]
    return list(zip(starts, [*starts[1:], len(poolings)], strict=True))


def _fuse_head_states(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Separate heads' state dicts (``body.0`` conv, ``body.1`` norm, ``fc``) as the fused module's."""
    out = {
        "conv.weight": torch.cat([s["body.0.weight"] for s in states]),
        "weight": torch.stack([s["fc.weight"] for s in states]),
        "bias": torch.stack([s["fc.bias"] for s in states]),
    }
    for key in states[0]:
        if key.startswith("body.1."):  # per-channel tensors concatenate; a step counter is shared
            values = [s[key] for s in states]
            out["norm." + key[len("body.1.") :]] = torch.cat(values) if values[0].ndim else values[0]
    return out


def resolve_layer(backbone: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """Find the shallow layer by name (default: the backbone's ``shallow_layer`` attribute)."""
    name = name or getattr(backbone, "shallow_layer", None)
    if not name:
        raise ValueError(
            f"{type(backbone).__name__} has no `shallow_layer` attribute; pass shallow_layer=<submodule name>"
        )
    modules = dict(backbone.named_modules())
    if name not in modules:
        top = [n for n in modules if n and n.count(".") <= 1][:12]
        raise ValueError(f"shallow_layer={name!r} is not a submodule of {type(backbone).__name__}; e.g. {top}")
    return name, modules[name]


class TwoHeadNet(nn.Module):
    """Backbone (main head) plus shallow heads tapping ``shallow_layer``'s output.

    Args:
        backbone: any classifier ``[B, *input_shape] -> [B, K]``.
        num_classes: number of classes.
        input_shape: one sample's shape, used once to size the shallow heads.
        shallow_layer: dotted submodule name; None uses ``backbone.shallow_layer``.
        poolings: one shallow head per entry.
        hidden: channels of each shallow head's conv.
        grad_to_stem: let the shallow loss train the shared stem (else stop-gradient).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        input_shape: tuple[int, ...],
        shallow_layer: str | None = None,
        poolings: tuple[Pooling, ...] = ("max", "avg"),
        hidden: int = 64,
        grad_to_stem: bool = True,
    ) -> None:
        super().__init__()
        if not poolings:
            raise ValueError("poolings must name at least one shallow head ('max' and/or 'avg')")
        self.backbone = backbone
        self.shallow_layer, layer = resolve_layer(backbone, shallow_layer)
        self.grad_to_stem = grad_to_stem
        self._features: Tensor | None = None
        self._stop_mask: Tensor | None = None
        self._capture = False
        layer.register_forward_hook(self._hook)
        features = self._probe(input_shape)
        # heads are initialised from a forked RNG: adding them leaves the global random stream (data
        # order, later initialisations) exactly as it is for the backbone alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() % 2**31 + 1)
            # built as separate heads (the same initial weights as ever), then fused
            heads = [ShallowHead(features.shape[1], num_classes, p, hidden, features.ndim - 2) for p in poolings]
            self.heads = FusedShallowHeads.from_heads(heads)

    @torch.no_grad()
    def _probe(self, input_shape: tuple[int, ...]) -> Tensor:
        was_training = self.backbone.training
        self.backbone.eval()
        self._capture = True
        try:
            self.backbone(torch.zeros(2, *input_shape))
            features = self._features
        finally:
            self._capture, self._features = False, None
            self.backbone.train(was_training)
        if not isinstance(features, Tensor):
            raise ValueError(f"shallow_layer={self.shallow_layer!r} must output a tensor")
        return features

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        if not self._capture:
            return None
        self._features = output
        if self._stop_mask is not None:  # stop selected samples' deep gradients at the stem
            mask = self._stop_mask.view(-1, *([1] * (output.ndim - 1)))
            return torch.where(mask, output.detach(), output)
        return None

    def forward(self, x: Tensor, stop_grad_mask: Tensor | None = None) -> TwoHeadOutput:
        """Both heads in one pass; ``stop_grad_mask`` ``[B]`` detaches those samples at the stem for the deep path."""
        self._capture, self._stop_mask = True, stop_grad_mask
        try:
            main = self.backbone(x)  # [B, K]
            features = self._features
        finally:
            self._capture, self._stop_mask, self._features = False, None, None
        assert features is not None
        if not self.grad_to_stem:
            features = features.detach()
        return TwoHeadOutput(main, self.heads(features))  # shallow: [H, B, K]

    def predict(self, x: Tensor) -> Tensor:
        """Inference through the main head only, ``[B, K]``."""
        return self.backbone(x)
