"""The registry of the low-rank schemes (``SCHEMES``; ``scheme(name)`` looks one up): for each,
its factor shapes, the matrix views of W [N, C, kh, kw] whose SVDs give the factors, the thin
convs it runs (with the stride, padding, dilation and groups of each), output sizes, MACs and
parameters. Pure shape arithmetic and reshapes, no SVD: the layers, the cost counts, the
decompositions, TRP and the benchmarks import it instead of re-deriving it. The schemes' math
is docs/design.md, "The schemes". The bias always belongs to the last conv; the rank of
``tucker2`` is a pair (r_in, r_out), the others' an int. Every tensor function accepts extra
leading batch dimensions. ``pointwise`` factorises 1x1 convs and linear layers; a linear layer
[N, C] is seen as the 1x1 conv [N, C, 1, 1] applied to each row of its input.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..ops import checks
from ..ops.conv_geometry import ThinConv, chain_out_hw, op_convs
from .matrix_views import IN_MODE, OUT_MODE, PER_FILTER, SPATIAL, MatrixView


# -- the schemes --------------------------------------------------------------------------------
class Scheme:
    """A low-rank scheme. Subclasses set the class attributes and the shape methods."""

    name: str
    factor_names: tuple[str, ...]
    views: tuple[MatrixView, ...]     # the matrices whose SVDs give the factors
    paired_rank = False               # rank is (r_in, r_out)
    fused_op = False                  # runs the library's lowrank_conv2d op (else ATen convs)
    default_penalty = "so"            # orthogonality_penalty's kind for its layers

    def check_kernel(self, kernel_size) -> None:
        """ValueError naming ``kernel_size`` where the scheme cannot factorise that kernel."""

    def full_rank(self, weight_shape):
        ranks = tuple(v.full_rank(weight_shape) for v in self.views)
        return ranks if self.paired_rank else ranks[0]

    def check_rank(self, rank, weight_shape, name: str = "rank"):
        """``rank`` as this scheme's rank (an int, or for tucker2 a pair; an int applies to
        both), each part in [0, full rank]; TypeError / ValueError naming ``name``."""
        full = self.full_rank(weight_shape)
        if self.paired_rank:
            parts = (rank, rank) if _is_int(rank) else rank
            if not (isinstance(parts, (tuple, list)) and len(parts) == 2
                    and all(_is_int(p) for p in parts)):
                raise TypeError(f"{name} must be an int or a pair of ints (r_in, r_out) for "
                                f"scheme '{self.name}', got {rank!r}")
            parts = tuple(int(p) for p in parts)
            if not all(0 <= p <= f for p, f in zip(parts, full)):
                raise ValueError(f"{name} (r_in, r_out) must be in [0, {full[0]}] x "
                                 f"[0, {full[1]}] for this layer, got {parts}")
            return parts
        if not _is_int(rank):
            raise TypeError(f"{name} must be an int for scheme '{self.name}', got {rank!r}")
        if not 0 <= rank <= full:
            raise ValueError(f"{name} must be in [0, {full}] (the full rank of this layer), "
                             f"got {rank}")
        return int(rank)

    def check_rank_spec(self, spec, name: str = "rank"):
        """A rank for every layer of a model: an int >= 1 (a cap, lowered to each layer's full
        rank) or a float in (0, 1] (a fraction of each layer's full rank, rounded up); for
        tucker2 also a pair of those, (r_in, r_out). None stays None."""
        if spec is None:
            return None
        if self.paired_rank and isinstance(spec, (tuple, list)) and len(spec) == 2:
            return tuple(checks.rank_or_fraction(p, name) for p in spec)
        if self.paired_rank or not isinstance(spec, (tuple, list)):
            return checks.rank_or_fraction(spec, name)
        raise TypeError(f"{name} must be an int or a float in (0, 1] for scheme "
                        f"'{self.name}' (a pair is for tucker2 only), got {spec!r}")

    def layer_rank(self, spec, weight_shape):
        """The rank bound that ``check_rank_spec``'s ``spec`` gives a layer of this shape."""
        if spec is None:
            return None
        full = self.rank_parts(self.full_rank(weight_shape))
        parts = spec if isinstance(spec, tuple) else (spec,) * len(full)
        bound = tuple(max(1, math.ceil(p * k)) if isinstance(p, float) else min(p, k)
                      for p, k in zip(parts, full))
        return bound if self.paired_rank else bound[0]

    def rank_parts(self, rank) -> tuple[int, ...]:
        """The rank as a tuple, one entry per matrix view."""
        return tuple(rank) if self.paired_rank else (rank,)

    def factor_shapes(self, weight_shape, rank) -> tuple[tuple[int, ...], ...]:
        raise NotImplementedError

    def rank_of(self, *factor_shapes):
        """The rank that factors of these shapes have."""
        raise NotImplementedError

    def kernel_of(self, *factor_shapes) -> tuple[int, int]:
        """(kh, kw) of the dense conv these factors represent."""
        raise NotImplementedError

    def fitted_rank(self, factor_shapes, weight_shape):
        """The rank at which factors of ``factor_shapes`` (4-D, the registry's shapes) are this
        scheme's factors of a ``weight_shape`` weight; None where they are not (a kernel the
        scheme cannot factorise, a rank out of range, or shapes that do not match): how a saved
        state_dict's factors are read."""
        shapes = [tuple(shape) for shape in factor_shapes]
        if any(len(shape) != 4 for shape in shapes):
            return None
        rank = self.rank_of(*shapes)
        try:
            self.check_kernel(weight_shape[2:])
            self.check_rank(rank, weight_shape)
        except (TypeError, ValueError):
            return None
        if [tuple(shape) for shape in self.factor_shapes(weight_shape, rank)] != shapes:
            return None
        return rank

    def weight_shape_of(self, *factor_shapes) -> tuple[int, int, int, int]:
        """(N, C, kh, kw) of the dense conv that factors of these shapes represent."""
        return (factor_shapes[-1][0], factor_shapes[0][1], *self.kernel_of(*factor_shapes))

    def full_weight(self, *factors) -> torch.Tensor:
        """The dense weight [N, C, kh, kw] the factors represent (differentiable)."""
        raise NotImplementedError

    def orthogonal_factors(self, *factors) -> tuple[torch.Tensor, ...]:
        """The factor matrices A [..., m, r] that the orthogonality penalty keeps orthonormal
        (differentiable views of the factors)."""
        raise NotImplementedError

    def convs(self, weight_shape, rank, stride=(1, 1), padding=(0, 0), dilation=(1, 1)
              ) -> tuple[ThinConv, ...]:
        raise NotImplementedError

    def out_hw(self, weight_shape, rank, input_hw, stride, padding, dilation):
        return chain_out_hw(self.convs(weight_shape, rank, stride, padding, dilation), input_hw)

    def macs(self, weight_shape, rank, input_hw, stride=(1, 1), padding=(0, 0),
             dilation=(1, 1)) -> tuple[int, tuple[int, int]]:
        """(MACs per sample, output size): each thin conv counted at its own resolution."""
        total, hw = 0, tuple(input_hw)
        for conv in self.convs(weight_shape, rank, stride, padding, dilation):
            macs, hw = conv.macs(hw)
            total += macs
        return total, hw

    def params(self, weight_shape, rank, bias: bool = False) -> int:
        return sum(c.weight_numel for c in self.convs(weight_shape, rank)) + (
            weight_shape[0] if bias else 0)


def format_rank(rank) -> str:
    """A rank for tables: "12", or "r_in,r_out" for tucker2."""
    return ",".join(map(str, rank)) if isinstance(rank, (tuple, list)) else str(rank)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class FactorPairScheme(Scheme):
    """channel, spatial, decoupled: one matrix view M = L R^T (decoupled: one per filter),
    split as L = U_r sqrt(S_r), R = V_r sqrt(S_r) into weight1 and weight2."""

    factor_names = ("weight1", "weight2")

    def rank_of(self, shape1, shape2):
        return shape1[0]

    def full_weight(self, weight1, weight2):
        L, R = self.orthogonal_factors(weight1, weight2)
        return self.views[0].to_weight(L @ R.mT, self.weight_shape_of(weight1.shape, weight2.shape))


class Channel(FactorPairScheme):
    name, views, fused_op = "channel", (OUT_MODE,), True

    def factor_shapes(self, weight_shape, rank):
        N, C, kh, kw = weight_shape[-4:]
        return (rank, C, kh, kw), (N, rank, 1, 1)

    def convs(self, weight_shape, rank, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        return op_convs(*self.factor_shapes(weight_shape, rank), stride, padding, dilation,
                        "channel")

    def kernel_of(self, shape1, shape2):
        return tuple(shape1[2:])

    def factors_from_matrix(self, L, R, weight_shape):
        """(weight1, weight2) from L [N, r] and R [C*kh*kw, r] with M = L R^T."""
        N, C, kh, kw = weight_shape[-4:]
        r = L.shape[-1]
        return R.T.reshape(r, C, kh, kw).contiguous(), L.reshape(N, r, 1, 1).contiguous()

    def orthogonal_factors(self, weight1, weight2):
        return weight2.flatten(1), weight1.flatten(1).T


class Spatial(FactorPairScheme):
    name, views, fused_op = "spatial", (SPATIAL,), True

    def factor_shapes(self, weight_shape, rank):
        N, C, kh, kw = weight_shape[-4:]
        return (rank, C, kh, 1), (N, rank, 1, kw)

    def convs(self, weight_shape, rank, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        return op_convs(*self.factor_shapes(weight_shape, rank), stride, padding, dilation,
                        self.name)

    def kernel_of(self, shape1, shape2):
        return (shape1[2], shape2[3])

    def factors_from_matrix(self, L, R, weight_shape):
        """(weight1, weight2) from L [C*kh, r] and R [N*kw, r] with M = L R^T."""
        N, C, kh, kw = weight_shape[-4:]
        r = L.shape[-1]
        weight1 = L.reshape(C, kh, r).permute(2, 0, 1)[..., None].contiguous()
        weight2 = R.T.reshape(r, N, kw).permute(1, 0, 2)[:, :, None, :].contiguous()
        return weight1, weight2

    def orthogonal_factors(self, weight1, weight2):
        left = weight1[..., 0].permute(1, 2, 0).flatten(0, 1)
        right = weight2[:, :, 0, :].permute(1, 0, 2).flatten(1).T
        return left, right


class Tucker2(Scheme):
    """W = G x_N U_out x_C U_in: U_in [C, r_in] and U_out [N, r_out] (orthonormal columns after
    a decomposition), core G [r_out, r_in, kh, kw]."""

    name, views, paired_rank = "tucker2", (IN_MODE, OUT_MODE), True
    factor_names = ("weight_in", "core", "weight_out")
    default_penalty = "dso"           # ELRT's double soft orthogonality

    def factor_shapes(self, weight_shape, rank):
        N, C, kh, kw = weight_shape[-4:]
        r_in, r_out = rank
        return (r_in, C, 1, 1), (r_out, r_in, kh, kw), (N, r_out, 1, 1)

    def rank_of(self, shape_in, shape_core, shape_out):
        return (shape_core[1], shape_core[0])

    def kernel_of(self, shape_in, shape_core, shape_out):
        return tuple(shape_core[2:])

    def convs(self, weight_shape, rank, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        N, C, kh, kw = weight_shape[-4:]
        r_in, r_out = rank
        return (ThinConv(C, r_in, (1, 1)),
                ThinConv(r_in, r_out, (kh, kw), tuple(stride), tuple(padding), tuple(dilation)),
                ThinConv(r_out, N, (1, 1)))

    def factors_from_bases(self, U_in, core, U_out):
        """(weight_in, core, weight_out) from U_in [C, r_in], core, U_out [N, r_out]."""
        return (U_in.T[..., None, None].contiguous(), core.contiguous(),
                U_out[..., None, None].contiguous())

    def core_of(self, W, U_in, U_out):
        """G = W x_N U_out^T x_C U_in^T (batched)."""
        return torch.einsum("...no,...ncij,...cp->...opij", U_out, W, U_in)

    def full_weight(self, weight_in, core, weight_out):
        return torch.einsum("no,opij,pc->ncij", weight_out[:, :, 0, 0], core,
                            weight_in[:, :, 0, 0])

    def orthogonal_factors(self, weight_in, core, weight_out):
        return weight_in[:, :, 0, 0].T, weight_out[:, :, 0, 0]


class Decoupled(FactorPairScheme):
    """Per filter n: W[n] as C x (kh*kw) = sum_j sigma_nj u_nj v_nj^T with one rank r per
    layer; row n*r + j of weight1 is sqrt(sigma_nj) u_nj, weight2[n, j] is sqrt(sigma_nj) v_nj."""

    name, views = "decoupled", (PER_FILTER,)

    def factor_shapes(self, weight_shape, rank):
        N, C, kh, kw = weight_shape[-4:]
        return (rank * N, C, 1, 1), (N, rank, kh, kw)

    def rank_of(self, shape1, shape2):
        return shape2[1]

    def kernel_of(self, shape1, shape2):
        return tuple(shape2[2:])

    def convs(self, weight_shape, rank, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        N, C, kh, kw = weight_shape[-4:]
        return (ThinConv(C, rank * N, (1, 1)),
                ThinConv(rank * N, N, (kh, kw), tuple(stride), tuple(padding), tuple(dilation),
                         groups=N))

    def factors_from_matrix(self, L, R, weight_shape):
        """(weight1, weight2) from L [N, C, r] and R [N, kh*kw, r] with W[n] = L[n] R[n]^T."""
        N, C, kh, kw = weight_shape[-4:]
        r = L.shape[-1]
        return (L.transpose(-1, -2).reshape(N * r, C, 1, 1).contiguous(),
                R.transpose(-1, -2).reshape(N, r, kh, kw).contiguous())

    def orthogonal_factors(self, weight1, weight2):
        N, r, kh, kw = weight2.shape
        L = weight1.reshape(N, r, weight1.shape[1]).transpose(1, 2)   # [N, C, r]
        R = weight2.reshape(N, r, kh * kw).transpose(1, 2)            # [N, kh*kw, r]
        return L, R


class Pointwise(Channel):
    """1x1 convs and linear layers: W [N, C] ~ U_r V_r^T as a 1x1 conv C -> r (the layer's
    stride) and a 1x1 conv r -> N, i.e. two GEMMs, so they run as ATen convs (or linears)."""

    name, fused_op = "pointwise", False

    def check_kernel(self, kernel_size) -> None:
        if tuple(kernel_size) != (1, 1):
            raise ValueError(f"kernel_size must be 1x1 for scheme 'pointwise' (1x1 convs and "
                             f"linear layers), got {tuple(kernel_size)}")


SCHEMES: dict[str, Scheme] = {s.name: s for s in (Channel(), Spatial(), Tucker2(), Decoupled(),
                                                  Pointwise())}


def scheme(name) -> Scheme:
    """The scheme called ``name``; ValueError naming the argument for an unknown one."""
    if name not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(repr(s) for s in SCHEMES)}, "
                         f"got {name!r}")
    return SCHEMES[name]
