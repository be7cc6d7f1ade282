"""Time-series backbones from tsai, each with a named shallow layer for the second head.

Every backbone takes ``(input_shape, num_classes)`` first, so a config can give it as a callable and
the datamodule fills both in. ``shallow_layer`` names the submodule whose output feeds the shallow
head (a forward hook: the tsai network runs unchanged).
"""

from __future__ import annotations

from torch import Tensor, nn


def _check_series_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(input_shape) != 2:
        raise ValueError(f"time-series backbones expect input_shape (C, L), got {tuple(input_shape)}")
    return int(input_shape[0]), int(input_shape[1])


class FCN(nn.Module):
    """Fully convolutional network (Wang et al., 2017) from ``tsai.models.FCN``.

    Shallow split: ``net.convblock1`` (the first conv block); deep trunk: blocks 2-3, GAP, linear.
    """

    shallow_layer = "net.convblock1"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        layers: tuple[int, int, int] = (128, 256, 128),
        kernel_sizes: tuple[int, int, int] = (7, 5, 3),
    ) -> None:
        super().__init__()
        from tsai.models.FCN import FCN as TsaiFCN

        c_in, _ = _check_series_shape(input_shape)
        self.net = TsaiFCN(c_in, num_classes, layers=list(layers), kss=list(kernel_sizes))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, K]
        return self.net(x)


class ResNet1d(nn.Module):
    """Residual network for series (Wang et al., 2017) from ``tsai.models.ResNet``.

    Shallow split: ``net.resblock1``; deep trunk: residual blocks 2-3, GAP, linear.
    """

    shallow_layer = "net.resblock1"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        from tsai.models.ResNet import ResNet as TsaiResNet

        c_in, _ = _check_series_shape(input_shape)
        self.net = TsaiResNet(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, K]
        return self.net(x)


class InceptionTime(nn.Module):
    """InceptionTime (Fawaz et al., 2020) from ``tsai.models.InceptionTime``.

    Shallow split: ``net.inceptionblock.inception.0`` (the first inception module; tsai's residual
    block cannot be cut in two, which the hook does not need).
    """

    shallow_layer = "net.inceptionblock.inception.0"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, nf: int = 32, depth: int = 6) -> None:
        super().__init__()
        from tsai.models.InceptionTime import InceptionTime as TsaiInceptionTime

        c_in, seq_len = _check_series_shape(input_shape)
        self.net = TsaiInceptionTime(c_in, num_classes, seq_len=seq_len, nf=nf, depth=depth)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, K]
        return self.net(x)


class TST(nn.Module):
    """Time Series Transformer (Zerveas et al., KDD 2021) from ``tsai.models.TST``.

    Each time step is a token, or, for a series longer than ``max_seq_len``, each non-overlapping
    window of ``ceil(L / max_seq_len)`` steps (tsai zero-pads the series to ``max_seq_len`` windows
    and embeds them with a strided conv); then ``n_layers`` post-norm encoder layers with BatchNorm,
    and a head that flattens all tokens into one linear layer. Attention is thus over at most
    ``max_seq_len`` tokens (OSULeaf's 427 steps: 128 tokens of 4 steps; ``max_seq_len=None`` keeps
    one token per step).

    Shallow split: the output of the first encoder layer. tsai keeps the encoder's features
    sequence-first, ``[B, L', D]``, but normalises them with ``Transpose -> BatchNorm1d -> Transpose``,
    so the hook sits on that BatchNorm (``net.encoder.layers.0.batchnorm_ffn.1``), whose output is the
    same features channel-first, ``[B, D, L']``, as the shallow head expects; the transpose after it
    is a view, so a stop-gradient applied there reaches the rest of the network unchanged. Deep trunk:
    encoder layers 2.., flatten, linear.

    With these defaults and the suites' recipe (Adam 1e-3, cosine, 40 epochs) it learns the small UCR
    sets less well than the convolutional nets (OSULeaf: about 50% clean accuracy, FCN about 80%).
    """

    shallow_layer = "net.encoder.layers.0.batchnorm_ffn.1"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        d_model: int = 64,
        n_layers: int = 3,
        n_heads: int = 8,
        d_ff: int = 128,
        dropout: float = 0.1,
        fc_dropout: float = 0.0,
        max_seq_len: int | None = 128,
    ) -> None:
        super().__init__()
        from tsai.models.TST import TST as TsaiTST

        c_in, seq_len = _check_series_shape(input_shape)
        if n_layers < 1:
            raise ValueError(f"n_layers={n_layers} must be at least 1 (the shallow head taps the first layer)")
        if d_model % n_heads:  # tsai's own check lets this through and fails later in a reshape
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.net = TsaiTST(
            c_in,
            num_classes,
            seq_len,
            max_seq_len=max_seq_len,
            n_layers=n_layers,
            d_model=d_model,
            n_heads=n_heads,
            d_ff=d_ff,
            dropout=dropout,
            fc_dropout=fc_dropout,
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, K]
        return self.net(x)
