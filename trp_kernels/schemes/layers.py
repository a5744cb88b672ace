"""LowRankConv2d: a conv layer stored as the factors of one of the low-rank schemes."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import checks
from ..ops.conv import composite_conv2d, lowrank_conv2d
from ..ops.conv_geometry import ThinConv
from . import geometry
from .factorised_layer import FactorisedLayer, positive_int


class LowRankConv2d(FactorisedLayer):
    """A conv2d layer whose weight is kept as the factors of a low-rank scheme: their names,
    shapes and the thin conv each runs are docs/design.md, "The schemes" (``layer.geometry`` is
    the layer's entry in the scheme registry). The bias belongs to the last thin conv; tucker2's
    rank is a pair (r_in, r_out), an int applying to both.

    channel and spatial run the library's fused op; tucker2, decoupled and pointwise (1x1 convs
    only) are composed from ATen convolutions. A freshly built layer is initialised
    spectrally: a dense weight drawn like nn.Conv2d's default init, truncated to the rank.
    ``from_conv`` decomposes a trained conv instead. Loading a state_dict whose factors have
    another rank resizes the layer, so a model can be rebuilt from a checkpoint without knowing
    its ranks (load before creating the optimizer).
    """

    def __init__(self, in_channels, out_channels, kernel_size, rank, stride=1, padding=0,
                 dilation=1, bias=True, scheme="channel", device=None, dtype=None):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = tuple(checks.pair(kernel_size, "kernel_size"))
        positive_int(self.kernel_size[0], "kernel_size")
        positive_int(self.kernel_size[1], "kernel_size")
        self.stride = tuple(checks.pair(stride, "stride"))
        self.padding = tuple(checks.pair(padding, "padding"))
        self.dilation = tuple(checks.pair(dilation, "dilation"))
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
                f"padding={padding}, dilation={dilation}"
            )
        self.geometry = geometry.scheme(scheme)
        self.scheme = self.geometry.name
        self.geometry.check_kernel(self.kernel_size)
        self._init_factors(rank, bias, device, dtype)

    # -- shape facts ---------------------------------------------------------------------------
    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def thin_convs(self) -> tuple[ThinConv, ...]:
        return self.geometry.convs(self.weight_shape, self.rank, self.stride, self.padding,
                                 self.dilation)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def empty_from_conv(cls, conv: nn.Conv2d, rank, scheme="channel") -> "LowRankConv2d":
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
            stride=conv.stride, padding=explicit_padding(conv), dilation=conv.dilation,
            bias=conv.bias is not None, scheme=scheme, device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        layer.train(conv.training)
        return layer

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, scheme="channel", energy=None, threshold=None,
                  rank=None, hooi_iterations=0) -> "LowRankConv2d":
        """Decomposes a trained nn.Conv2d (groups 1, zero padding) into a LowRankConv2d.

        The rank is chosen by the rule of ``truncated_svd`` (energy, threshold, rank as an upper
        bound: for tucker2 an int or a pair (r_in, r_out), applied to each mode unfolding); with
        none given the decomposition is exact (full rank). tucker2 is the HOSVD, refined by
        ``hooi_iterations`` HOOI sweeps where they lower the error; decoupled takes the largest
        of its filters' ranks as the layer's."""
        return cls.from_convs([conv], scheme, energy, threshold, [rank], hooi_iterations)[0]

    @classmethod
    def from_convs(cls, convs, scheme="channel", energy=None, threshold=None, ranks=None,
                   hooi_iterations=0) -> list["LowRankConv2d"]:
        """``from_conv`` of every conv of ``convs`` (``ranks``: one upper bound per conv, or
        None); convs of one weight shape, dtype, device and bound share one batched
        factorisation (one SVD call per matrix view)."""
        layers = [cls.empty_from_conv(conv, 0, scheme) for conv in convs]  # checks before SVDs
        return cls._decompose_into(layers, convs, scheme, energy, threshold, ranks,
                                   hooi_iterations)

    # -- use -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.geometry.fused_op:
            return lowrank_conv2d(x, self.weight1, self.weight2, self.bias, self.stride,
                                  self.padding, self.dilation, self.scheme)
        return composite_conv2d(x, self.factors, self.thin_convs(), self.bias)

    def to_convs(self) -> nn.Sequential:
        """Plain nn.Conv2d layers with the same outputs, one per thin conv (for export or plain
        PyTorch): two for channel, spatial and decoupled, three for tucker2."""
        kw = {"device": self.factors[0].device, "dtype": self.factors[0].dtype}
        convs = self.thin_convs()
        plain = []
        for i, (c, weight) in enumerate(zip(convs, self.factors)):
            last = i == len(convs) - 1
            conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel, c.stride, c.padding,
                             c.dilation, c.groups, bias=last and self.bias is not None, **kw)
            with torch.no_grad():
                conv.weight.copy_(weight)
                if conv.bias is not None:
                    conv.bias.copy_(self.bias)
            plain.append(conv)
        return nn.Sequential(*plain)

    def to_conv_pair(self) -> nn.Sequential:
        """Two plain nn.Conv2d layers with the same outputs (the two-conv schemes)."""
        if len(self.geometry.factor_names) != 2:
            raise ValueError(f"scheme '{self.scheme}' runs {len(self.geometry.factor_names)} "
                             f"convs, not a pair; use to_convs()")
        return self.to_convs()

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


def explicit_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """``conv``'s padding as a pair of ints ('valid' and symmetric 'same' spelled out)."""
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
