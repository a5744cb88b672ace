"""The matrix views of a conv weight W [..., N, C, kh, kw]: the matrices whose SVDs give a
scheme's factors (docs/design.md, "The schemes"). A view only reshapes and permutes, so every
matrix element is one weight element; that is what lets TRP lay each weight over its slot of a
stacked matrix buffer without a copy (``MatrixView.layout``; rank_training/groups.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MatrixView:
    """One way of seeing W [..., N, C, kh, kw] as a matrix [..., m, n] (per_filter: a batch of
    N matrices, one per filter). ``to_weight`` inverts ``to_matrix``. Subclasses set both and
    ``shape``; every function accepts extra leading batch dimensions."""

    name: str

    def shape(self, weight_shape) -> tuple[int, ...]:
        raise NotImplementedError

    def to_matrix(self, W: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_weight(self, M: torch.Tensor, weight_shape) -> torch.Tensor:
        raise NotImplementedError

    def full_rank(self, weight_shape) -> int:
        return min(self.shape(weight_shape)[-2:])

    def layout(self, weight_shape) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """(matrix shape, strides, offset): ``as_strided(M, weight_shape, strides, offset)`` of
        a contiguous matrix M is the weight that ``to_matrix`` turns into M, without a copy.
        Found by sending the weight's element indices through ``to_matrix``; ValueError for a
        view that is not a reshape or permutation."""
        weight_shape = tuple(weight_shape)
        numel = math.prod(weight_shape)
        index = self.to_matrix(torch.arange(numel).reshape(weight_shape))
        matrix_shape = tuple(index.shape)
        flat = index.reshape(-1)
        if flat.numel() != numel or not torch.equal(flat.sort().values, torch.arange(numel)):
            raise ValueError(f"the matrix view of a {weight_shape} weight is not a reshape or "
                             f"permutation of its elements")
        position = torch.empty(numel, dtype=torch.int64)
        position[flat] = torch.arange(numel)      # where each weight element sits in M
        position = position.reshape(weight_shape)
        offset = int(position.reshape(-1)[0])
        strides = []
        for dim, size in enumerate(weight_shape):
            unit = [0] * len(weight_shape)
            unit[dim] = 1 if size > 1 else 0   # a dimension of size 1 takes any stride
            strides.append(int(position[tuple(unit)]) - offset if size > 1 else 1)
        # The defining property: the strided weight of a matrix turns back into that matrix.
        elements = torch.arange(numel)
        if not torch.equal(self.to_matrix(elements.as_strided(weight_shape, strides, offset)),
                           elements.reshape(matrix_shape)):
            raise ValueError(f"the matrix view of a {weight_shape} weight is not a strided view")
        return matrix_shape, tuple(strides), offset


class OutMode(MatrixView):
    """W_(N) [N, C*kh*kw], the output-mode unfolding (a view of a contiguous W)."""

    def shape(self, weight_shape):
        N, C, kh, kw = weight_shape[-4:]
        return (N, C * kh * kw)

    def to_matrix(self, W):
        *batch, N, C, kh, kw = W.shape
        return W.reshape(*batch, N, C * kh * kw)

    def to_weight(self, M, weight_shape):
        return M.reshape(*M.shape[:-2], *weight_shape[-4:])


class InMode(MatrixView):
    """W_(C) [C, N*kh*kw], the input-mode unfolding."""

    def shape(self, weight_shape):
        N, C, kh, kw = weight_shape[-4:]
        return (C, N * kh * kw)

    def to_matrix(self, W):
        *batch, N, C, kh, kw = W.shape
        b = len(batch)
        return W.transpose(b, b + 1).reshape(*batch, C, N * kh * kw)

    def to_weight(self, M, weight_shape):
        N, C, kh, kw = weight_shape[-4:]
        batch = M.shape[:-2]
        b = len(batch)
        return M.reshape(*batch, C, N, kh, kw).transpose(b, b + 1).contiguous()


class SpatialView(MatrixView):
    """[C*kh, N*kw]: rows index (c, i), columns (n, j)."""

    def shape(self, weight_shape):
        N, C, kh, kw = weight_shape[-4:]
        return (C * kh, N * kw)

    def to_matrix(self, W):
        *batch, N, C, kh, kw = W.shape
        b = len(batch)
        lead = tuple(range(b))
        return W.permute(*lead, b + 1, b + 2, b, b + 3).reshape(*batch, C * kh, N * kw)

    def to_weight(self, M, weight_shape):
        N, C, kh, kw = weight_shape[-4:]
        batch = M.shape[:-2]
        b = len(batch)
        lead = tuple(range(b))
        return M.reshape(*batch, C, kh, N, kw).permute(*lead, b + 2, b, b + 1, b + 3).contiguous()


class PerFilter(MatrixView):
    """[N, C, kh*kw]: each output filter as a C x (kh*kw) matrix."""

    def shape(self, weight_shape):
        N, C, kh, kw = weight_shape[-4:]
        return (N, C, kh * kw)

    def to_matrix(self, W):
        *batch, N, C, kh, kw = W.shape
        return W.reshape(*batch, N, C, kh * kw)

    def to_weight(self, M, weight_shape):
        return M.reshape(*M.shape[:-3], *weight_shape[-4:])


def weight_as_conv(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight as it is, a linear weight [N, C] as the 1x1 conv weight [N, C, 1, 1] (a
    view): the schemes see a linear layer as a 1x1 conv applied to each row of its input."""
    return weight if weight.dim() == 4 else weight[:, :, None, None]


OUT_MODE, IN_MODE = OutMode("out_mode"), InMode("in_mode")
SPATIAL, PER_FILTER = SpatialView("spatial"), PerFilter("per_filter")
