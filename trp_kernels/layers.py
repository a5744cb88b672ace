"""LowRankConv2d: a conv layer stored as its two TRP factors."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _checks, factorization
from .conv import lowrank_conv2d, split_geometry


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class LowRankConv2d(nn.Module):
    """A conv2d layer whose weight is kept as two thin convolutions of rank ``rank``.

    ``scheme="channel"``: a kh x kw conv from C to r channels (with the layer's stride, padding
    and dilation), then a 1 x 1 conv from r to N channels. ``scheme="spatial"``: a kh x 1 conv
    to r channels, then a 1 x kw conv. The bias belongs to the second conv.

    A freshly built layer is initialised spectrally: a dense weight drawn like nn.Conv2d's
    default init, truncated to rank ``rank``. ``from_conv`` decomposes a trained conv instead.
    Loading a state_dict whose factors have another rank resizes the layer, so a model can be
    rebuilt from a checkpoint without knowing its ranks (load before creating the optimizer).
    """

    def __init__(self, in_channels, out_channels, kernel_size, rank, stride=1, padding=0,
                 dilation=1, bias=True, scheme="channel", device=None, dtype=None):
        super().__init__()
        self.in_channels = _positive(in_channels, "in_channels")
        self.out_channels = _positive(out_channels, "out_channels")
        self.kernel_size = tuple(_checks.pair(kernel_size, "kernel_size"))
        _positive(self.kernel_size[0], "kernel_size")
        _positive(self.kernel_size[1], "kernel_size")
        self.stride = tuple(_checks.pair(stride, "stride"))
        self.padding = tuple(_checks.pair(padding, "padding"))
        self.dilation = tuple(_checks.pair(dilation, "dilation"))
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
                f"padding={padding}, dilation={dilation}"
            )
        self.scheme = _checks.scheme(scheme)
        rank = _checks.optional_int(rank, "rank")
        if rank is None or not 0 <= rank <= self.full_rank:
            raise ValueError(f"rank must be an int in [0, {self.full_rank}], got {rank!r}")
        kw = {"device": device, "dtype": dtype}
        shape1, shape2 = factorization.factor_shapes(self.weight_shape, rank, self.scheme)
        self.weight1 = nn.Parameter(torch.empty(shape1, **kw))
        self.weight2 = nn.Parameter(torch.empty(shape2, **kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    # -- shape facts ---------------------------------------------------------------------------
    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def full_rank(self) -> int:
        return factorization.full_rank(self.weight_shape, self.scheme)

    @property
    def rank(self) -> int:
        return self.weight1.shape[0]

    # -- construction --------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        if self.weight1.is_meta:
            return
        with torch.no_grad():
            dense = torch.empty(self.weight_shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(dense, a=math.sqrt(5))  # nn.Conv2d's default
            weight1, weight2 = factorization.decompose_weight(dense, self.scheme, rank=self.rank)
            self._set_factors(weight1, weight2)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
                nn.init.uniform_(self.bias, -bound, bound)

    def _set_factors(self, weight1: torch.Tensor, weight2: torch.Tensor) -> None:
        """Copies factors in; a rank below the layer's (a rank-deficient weight) is zero-padded."""
        r = weight1.shape[0]
        self.weight1.zero_()
        self.weight2.zero_()
        self.weight1[:r].copy_(weight1)
        self.weight2[:, :r].copy_(weight2)

    @classmethod
    def empty_from_conv(cls, conv: nn.Conv2d, rank: int, scheme="channel") -> "LowRankConv2d":
        """An uninitialised LowRankConv2d of rank ``rank`` with ``conv``'s geometry, bias, device
        and dtype (no SVD): a layer to load factors into."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"conv must have groups=1 to be decomposed, got groups={conv.groups}")
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"conv must use padding_mode='zeros' to be decomposed, got '{conv.padding_mode}'"
            )
        layer = torch.nn.utils.skip_init(
            cls, conv.in_channels, conv.out_channels, conv.kernel_size, rank,
            stride=conv.stride, padding=_explicit_padding(conv), dilation=conv.dilation,
            bias=conv.bias is not None, scheme=scheme, device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        layer.train(conv.training)
        return layer

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, scheme="channel", energy=None, threshold=None,
                  rank=None) -> "LowRankConv2d":
        """Decomposes a trained nn.Conv2d (groups 1, zero padding) into a LowRankConv2d.

        The rank is chosen by the rule of ``truncated_svd`` (energy, threshold, rank as an upper
        bound); with none given the decomposition is exact (full rank)."""
        layer = cls.empty_from_conv(conv, 0, scheme)   # checks conv before the SVD runs
        weight1, weight2 = factorization.decompose_weight(
            conv.weight, scheme, energy=energy, threshold=threshold, rank=rank
        )
        layer.resize_rank(weight1.shape[0])
        with torch.no_grad():
            layer.weight1.copy_(weight1)
            layer.weight2.copy_(weight2)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    # -- use -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lowrank_conv2d(x, self.weight1, self.weight2, self.bias, self.stride,
                              self.padding, self.dilation, self.scheme)

    def full_weight(self) -> torch.Tensor:
        """The dense [N, C, kh, kw] weight this layer computes with (differentiable)."""
        return factorization.full_weight(self.weight1, self.weight2, self.scheme)

    def to_conv_pair(self) -> nn.Sequential:
        """Two plain nn.Conv2d layers with the same outputs (for export or plain PyTorch)."""
        (s1, p1, d1), (s2, p2, d2) = split_geometry(self.stride, self.padding, self.dilation,
                                                    self.scheme)
        kw = {"device": self.weight1.device, "dtype": self.weight1.dtype}
        first = nn.Conv2d(self.in_channels, self.rank, tuple(self.weight1.shape[2:]), s1, p1, d1,
                          bias=False, **kw)
        second = nn.Conv2d(self.rank, self.out_channels, tuple(self.weight2.shape[2:]), s2, p2,
                           d2, bias=self.bias is not None, **kw)
        with torch.no_grad():
            first.weight.copy_(self.weight1)
            second.weight.copy_(self.weight2)
            if self.bias is not None:
                second.bias.copy_(self.bias)
        return nn.Sequential(first, second)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"rank={self.rank}/{self.full_rank}, scheme='{self.scheme}', stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s

    # -- checkpoints with another rank ---------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        weight1 = state_dict.get(prefix + "weight1")
        weight2 = state_dict.get(prefix + "weight2")
        if isinstance(weight1, torch.Tensor) and isinstance(weight2, torch.Tensor) \
                and weight1.dim() == 4 and weight1.shape[0] != self.rank:
            rank = weight1.shape[0]
            shape1, shape2 = factorization.factor_shapes(self.weight_shape, rank, self.scheme)
            if tuple(weight1.shape) == shape1 and tuple(weight2.shape) == shape2 \
                    and rank <= self.full_rank:
                self.resize_rank(rank)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def resize_rank(self, rank: int) -> None:
        """Replaces the factors by uninitialised ones of another rank (new Parameters)."""
        if not 0 <= rank <= self.full_rank:
            raise ValueError(f"rank must be in [0, {self.full_rank}], got {rank}")
        shape1, shape2 = factorization.factor_shapes(self.weight_shape, rank, self.scheme)
        kw = {"device": self.weight1.device, "dtype": self.weight1.dtype}
        self.weight1 = nn.Parameter(torch.empty(shape1, **kw))
        self.weight2 = nn.Parameter(torch.empty(shape2, **kw))


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    # 'same' (stride 1): total padding d*(k-1) per dimension, split evenly when it is even.
    totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    if any(t % 2 for t in totals):
        raise ValueError(
            "conv uses padding='same' with an even dilated kernel, which pads asymmetrically; "
            "LowRankConv2d supports symmetric padding only"
        )
    return tuple(t // 2 for t in totals)
