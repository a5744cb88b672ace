"""What the library's low-rank layers (LowRankConv2d, LowRankLinear) share: factors named and
shaped by the scheme registry (geometry.py), the rank they imply, a spectral initialisation,
decomposing dense layers in batches, and resizing to the rank of a loaded state_dict.

Each layer represents a dense conv weight [N, C, kh, kw] (``weight_shape``; a linear layer is
the 1x1 conv [N, C, 1, 1]) and stores its factors in its own parameter shapes
(``factor_shapes``); ``conv_factors`` gives them back in the registry's 4-D shapes.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from . import factorization
from .matrix_views import weight_as_conv


def positive_int(value, name: str) -> int:
    """A layer's size: ValueError naming ``name`` for anything but an int >= 1 (docs/design.md,
    "Errors": the layers' sizes raise ValueError whatever is wrong)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class FactorisedLayer(nn.Module):
    """Base of the low-rank layers. Subclasses set ``geometry`` (the scheme's registry entry),
    ``scheme``, ``in_channels``, ``out_channels`` and ``bias``, and define ``weight_shape``,
    ``dense_shape`` and, where their parameters are not the registry's 4-D factors,
    ``factor_shapes`` and ``conv_factors``."""

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        raise NotImplementedError

    @property
    def dense_shape(self) -> tuple[int, ...]:
        """The shape of the dense layer's weight (that of ``full_weight``)."""
        return self.weight_shape

    def factor_shapes(self, rank) -> tuple[tuple[int, ...], ...]:
        """The parameter shapes of the factors at ``rank``."""
        return self.geometry.factor_shapes(self.weight_shape, rank)

    def conv_factors(self) -> tuple[torch.Tensor, ...]:
        """The factors in the registry's shapes (views of the parameters)."""
        return self.factors

    # -- shape facts ---------------------------------------------------------------------------
    @property
    def full_rank(self):
        return self.geometry.full_rank(self.weight_shape)

    @property
    def factors(self) -> tuple[nn.Parameter, ...]:
        """The factor parameters, in the order of their thin convs."""
        return tuple(getattr(self, name) for name in self.geometry.factor_names)

    @property
    def rank(self):
        """An int, or (r_in, r_out) for tucker2."""
        return self.geometry.rank_of(*(f.shape for f in self.conv_factors()))

    def full_weight(self) -> torch.Tensor:
        """The dense weight this layer computes with (differentiable)."""
        return self.geometry.full_weight(*self.conv_factors()).reshape(self.dense_shape)

    # -- construction --------------------------------------------------------------------------
    def _init_factors(self, rank, bias: bool, device, dtype) -> None:
        """The factors at ``rank`` (checked against the layer's shape) and the bias, initialised
        (``reset_parameters``); the end of a subclass's constructor."""
        rank = self.geometry.check_rank(rank, self.weight_shape)
        self._make_factors(rank, device, dtype)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _make_factors(self, rank, device, dtype) -> None:
        for name, shape in zip(self.geometry.factor_names, self.factor_shapes(rank)):
            setattr(self, name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))

    def reset_parameters(self) -> None:
        """A dense weight drawn like nn.Conv2d's (and nn.Linear's) default init, truncated to
        the rank; the bias as theirs."""
        if self.factors[0].is_meta:
            return
        with torch.no_grad():
            dense = torch.empty(self.weight_shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(dense, a=math.sqrt(5))
            factors = factorization.decompose_weights(dense[None], self.scheme, rank=self.rank,
                                                      exact_rank=True)[0]
            self._copy_factors(factors)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(math.prod(self.weight_shape[1:]))
                nn.init.uniform_(self.bias, -bound, bound)

    def _copy_factors(self, factors) -> None:
        """Copies factors in the registry's shapes into the parameters."""
        with torch.no_grad():
            for param, value in zip(self.factors, factors):
                param.copy_(value.reshape(param.shape))

    @classmethod
    def _decompose_into(cls, layers, modules, scheme, energy, threshold, ranks,
                        hooi_tolerance) -> list:
        """Fills ``layers`` (empty, one per dense module of ``modules``) with the factors of the
        modules' weights by the rank rule (``ranks``: one upper bound per module, or None) and
        copies their biases; modules of one weight shape, dtype, device and bound share one
        batched factorisation (one SVD call per matrix view)."""
        ranks = [None] * len(modules) if ranks is None else list(ranks)
        if len(ranks) != len(modules):
            raise ValueError(f"ranks must have one entry per layer ({len(modules)}), got "
                             f"{len(ranks)}")
        groups = defaultdict(list)
        for i, (layer, rank) in enumerate(zip(layers, ranks)):
            if rank is not None:
                rank = layer.rank_bound(rank)
            w = modules[i].weight
            groups[(tuple(w.shape), w.dtype, w.device, rank)].append(i)
        for (_, _, _, rank), indices in groups.items():
            stacked = torch.stack([weight_as_conv(modules[i].weight.detach())
                                   for i in indices])
            results = factorization.decompose_weights(stacked, scheme, energy, threshold, rank,
                                                      hooi_tolerance)
            for i, factors in zip(indices, results):
                layer = layers[i]
                layer.resize_rank(layer.geometry.rank_of(*(f.shape for f in factors)))
                layer._copy_factors(factors)
                layer._copy_bias(modules[i])
        return layers

    def rank_bound(self, rank):
        """``from_conv``'s (and ``from_linear``'s) rank as the layer's rank bound: ints (or a
        tucker2 pair of them) as they are, at most the full rank; a float in (0, 1] as that
        fraction of the full rank, rounded up, as ``decompose_model`` reads it."""
        parts = rank if isinstance(rank, (tuple, list)) else (rank,)
        if any(isinstance(p, float) for p in parts):
            rank = self.geometry.layer_rank(self.geometry.check_rank_spec(rank), self.weight_shape)
        return self.geometry.check_rank(rank, self.weight_shape)

    def _copy_bias(self, module: nn.Module) -> None:
        if module.bias is not None:
            with torch.no_grad():
                self.bias.copy_(module.bias)

    def _fill_from_svd(self, module: nn.Module, svd, rank) -> None:
        """The factors at ``rank`` from the SVD (U, S, V) of ``module``'s matrix
        (``factorization.matrix_svds``), and its bias; the one-matrix schemes."""
        self._copy_factors(factorization.factors_from_svd(*svd, rank, self.weight_shape,
                                                          self.scheme))
        self._copy_bias(module)

    # -- checkpoints with another rank ---------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        saved = [state_dict.get(prefix + name) for name in self.geometry.factor_names]
        dims = len(self.factors[0].shape)
        if all(isinstance(t, torch.Tensor) and t.dim() == dims for t in saved):
            # a linear layer's 2-D factors are those of the 1x1 conv it is to the registry
            shapes = [tuple(t.shape) + (1,) * (4 - t.dim()) for t in saved]
            rank = self.geometry.fitted_rank(shapes, self.weight_shape)
            if rank is not None and rank != self.rank:
                self.resize_rank(rank)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def resize_rank(self, rank) -> None:
        """Replaces the factors by uninitialised ones of another rank (new Parameters)."""
        rank = self.geometry.check_rank(rank, self.weight_shape)
        self._make_factors(rank, self.factors[0].device, self.factors[0].dtype)
