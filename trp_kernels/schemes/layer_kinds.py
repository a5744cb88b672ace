"""The dense layers the schemes factorise and the low-rank layer that replaces each: an
nn.Conv2d becomes a LowRankConv2d (any scheme; ``pointwise`` for a 1x1 kernel), an nn.Linear a
LowRankLinear (``pointwise``). Compression, TRP and export call these instead of asking which
kind a layer is. A linear weight [N, C] is seen as the 1x1 conv weight [N, C, 1, 1]
(``weight_as_conv``), which is how the registry's views and shapes serve both kinds."""

from __future__ import annotations

from torch import nn

from .factorised_layer import FactorisedLayer
from .layers import LowRankConv2d
from .lowrank_linear import LowRankLinear
from .matrix_views import weight_as_conv

DENSE_LAYERS = (nn.Conv2d, nn.Linear)
LOWRANK_LAYERS = (LowRankConv2d, LowRankLinear)


def conv_weight_shape(module: nn.Module) -> tuple[int, int, int, int]:
    """The 4-D conv weight shape of a dense or low-rank layer."""
    if isinstance(module, FactorisedLayer):
        return module.weight_shape
    return tuple(weight_as_conv(module.weight).shape)


def empty_lowrank(module: nn.Module, scheme: str, rank=0) -> FactorisedLayer:
    """An uninitialised low-rank layer of rank ``rank`` in place of the dense ``module``."""
    if isinstance(module, nn.Linear):
        _pointwise_only(scheme)
        return LowRankLinear.empty_from_linear(module, rank)
    return LowRankConv2d.empty_from_conv(module, rank, scheme)


def decompose_layers(modules, scheme: str, energy=None, threshold=None,
                     ranks=None) -> list[FactorisedLayer]:
    """The low-rank layers of dense ``modules`` (all convs, or with ``scheme`` "pointwise"
    convs and linear layers) by the rank rule, one batched factorisation per weight shape."""
    ranks = [None] * len(modules) if ranks is None else list(ranks)
    linear = [isinstance(m, nn.Linear) for m in modules]
    if any(linear):
        _pointwise_only(scheme)
    layers: list = [None] * len(modules)
    for kind in (False, True):
        indices = [i for i, is_linear in enumerate(linear) if is_linear == kind]
        chosen, bounds = [modules[i] for i in indices], [ranks[i] for i in indices]
        if not indices:
            continue
        built = (LowRankLinear.from_linears(chosen, energy, threshold, bounds) if kind
                 else LowRankConv2d.from_convs(chosen, scheme, energy, threshold, bounds))
        for i, layer in zip(indices, built):
            layers[i] = layer
    return layers


def lowrank_from_svd(module: nn.Module, scheme: str, svd, rank: int) -> FactorisedLayer:
    """The low-rank layer of ``module`` at ``rank`` from the SVD of its matrix, already
    computed (``factorization.matrix_svds``); the one-matrix schemes."""
    layer = empty_lowrank(module, scheme, rank)
    layer._fill_from_svd(module, svd, rank)
    return layer


def plain_layers(layer: FactorisedLayer) -> nn.Sequential:
    """The plain PyTorch layers with ``layer``'s outputs: its thin convs, or two linears."""
    return layer.to_linears() if isinstance(layer, LowRankLinear) else layer.to_convs()


def _pointwise_only(scheme: str) -> None:
    if scheme != "pointwise":
        raise ValueError(f"linear layers are factorised in scheme 'pointwise', not {scheme!r}")
