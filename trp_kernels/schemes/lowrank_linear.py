"""LowRankLinear: a linear layer stored as the factors of the ``pointwise`` scheme, W ~ U_r V_r,
run as two linear layers (C -> r, then r -> N with the bias); the sibling of LowRankConv2d."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import geometry
from .factorised_layer import FactorisedLayer, positive_int


class LowRankLinear(FactorisedLayer):
    """A linear layer y = x W^T + b with W [N, C] kept as weight2 [N, r] @ weight1 [r, C]
    (docs/design.md, "The schemes", ``pointwise``). Its geometry is that of the 1x1 conv
    [N, C, 1, 1] applied to each row of the input, so the scheme registry, the rank rule, TRP
    and the cost counts treat it as one. A freshly built layer is initialised spectrally (a
    dense weight drawn like nn.Linear's default init, truncated to the rank); ``from_linear``
    decomposes a trained nn.Linear. Loading a state_dict whose factors have another rank
    resizes the layer."""

    def __init__(self, in_features, out_features, rank, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_channels = positive_int(in_features, "in_features")
        self.out_channels = positive_int(out_features, "out_features")
        self.geometry = geometry.scheme("pointwise")
        self.scheme = self.geometry.name
        self._init_factors(rank, bias, device, dtype)

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    # -- shape facts ---------------------------------------------------------------------------
    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, 1, 1)

    @property
    def dense_shape(self) -> tuple[int, int]:
        return (self.out_channels, self.in_channels)

    def factor_shapes(self, rank):
        return tuple(shape[:2] for shape in self.geometry.factor_shapes(self.weight_shape, rank))

    def conv_factors(self):
        return tuple(f[:, :, None, None] for f in self.factors)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def empty_from_linear(cls, linear: nn.Linear, rank) -> "LowRankLinear":
        """An uninitialised LowRankLinear of rank ``rank`` with ``linear``'s sizes, bias, device
        and dtype (no SVD): a layer to load factors into."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = torch.nn.utils.skip_init(
            cls, linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
            device=linear.weight.device, dtype=linear.weight.dtype)
        layer.train(linear.training)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, energy=None, threshold=None,
                    rank=None) -> "LowRankLinear":
        """Decomposes a trained nn.Linear, its rank by the rule of ``truncated_svd`` (energy,
        threshold, rank as an upper bound); with none given the decomposition is exact."""
        return cls.from_linears([linear], energy, threshold, [rank])[0]

    @classmethod
    def from_linears(cls, linears, energy=None, threshold=None,
                     ranks=None) -> list["LowRankLinear"]:
        """``from_linear`` of every layer of ``linears`` (``ranks``: one upper bound each, or
        None); layers of one shape, dtype, device and bound share one batched SVD."""
        layers = [cls.empty_from_linear(linear, 0) for linear in linears]
        return cls._decompose_into(layers, linears, "pointwise", energy, threshold, ranks, 0)

    # -- use -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.weight1), self.weight2, self.bias)

    def to_linears(self) -> nn.Sequential:
        """Two plain nn.Linear layers with the same outputs (C -> r, then r -> N with the
        bias), for export or plain PyTorch."""
        kw = {"device": self.weight1.device, "dtype": self.weight1.dtype}
        first = nn.Linear(self.in_channels, self.rank, bias=False, **kw)
        second = nn.Linear(self.rank, self.out_channels, bias=self.bias is not None, **kw)
        with torch.no_grad():
            first.weight.copy_(self.weight1)
            second.weight.copy_(self.weight2)
            if self.bias is not None:
                second.bias.copy_(self.bias)
        return nn.Sequential(first, second)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_channels}, out_features={self.out_channels}, "
                f"rank={self.rank}/{self.full_rank}, scheme='pointwise'"
                + ("" if self.bias is not None else ", bias=False"))
