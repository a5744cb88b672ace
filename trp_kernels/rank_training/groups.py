"""The stacked matrix groups behind a TRP step: built once, then a handful of tensor ops a step.

A scheme enters TRP through its matrix views (schemes/matrix_views.py): each shows a conv weight
[N, C, kh, kw] as a matrix [m, n] (or a batch of matrices [..., m, n]) by reshaping and
permuting alone, so that every matrix element is one weight element.

``StackedGroups`` groups the layers once, by (matrix shape, working dtype, device), and keeps for
every group a contiguous matrix buffer [G, m, n], every buffer a slice of one flat tensor per
device. Each layer's weight is laid over its slot of the buffer as a strided view
(``MatrixView.layout``: no copy, whatever the permutation), so a step is

    gather     torch._foreach_copy_(slots, weights)        one op for all layers
    project    lowrank_project_groups(buffers)             one op per device
    keep       torch._foreach_copy_(buffers, results)      one op
    write      torch._foreach_copy_(weights, slots)        one op (or _foreach_add_ into grads)

and a DDP broadcast is one collective on the flat tensor. Half-precision weights are gathered
into float32 buffers (the SVD ops take float32/float64) by the same copies.

With ``warm_start``, each group also keeps the basis the op returned for its matrices
([G, ..., k, k], float64, on the group's device) and passes it back at the next projection
(docs/svd_paths.md, "Warm start"); ``layer_basis`` / ``set_layer_basis`` read and write one
layer's part of it (a layer without one gets NaN, which the op treats as no start).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from ..ops import svd
from ..schemes.matrix_views import MatrixView


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The SVD ops take float32/float64; half-precision weights go through float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class StackedGroups:
    """Matrix buffers for ``weights`` (layers of one matrix shape stacked), and each weight's
    strided slot in them. ``views``: the matrix view of every weight, or one for all (layers of
    several schemes share a group where their matrices have one shape). Built for one set of
    weight shapes, dtypes and devices (``fits``)."""

    def __init__(self, weights: list[torch.Tensor], views: MatrixView | list[MatrixView],
                 warm_start: bool = False):
        self.signature = self._signature(weights)
        self.warm_start = warm_start
        keys: dict[tuple, list[int]] = defaultdict(list)   # first-seen order, as the model's
        if isinstance(views, MatrixView):
            views = [views] * len(weights)
        by_shape = {key: key[1].layout(key[0])
                    for key in dict.fromkeys((tuple(w.shape), v) for w, v in zip(weights, views))}
        layouts = [by_shape[(tuple(w.shape), v)] for w, v in zip(weights, views)]
        for i, (w, (matrix_shape, _, _)) in enumerate(zip(weights, layouts)):
            keys[(matrix_shape, _work_dtype(w.dtype), w.device)].append(i)
        # One flat tensor per (dtype, device): the groups' buffers are slices of it, so a
        # broadcast is one collective and the kept results need no concatenation.
        totals: dict[tuple, int] = defaultdict(int)
        for (shape, dtype, device), members in keys.items():
            totals[(dtype, device)] += len(members) * math.prod(shape)
        self.flat = {key: torch.zeros(n, dtype=key[0], device=key[1]) for key, n in totals.items()}
        self.subgrad_flat = {key: torch.zeros(n, dtype=key[0], device=key[1])
                             for key, n in totals.items()}
        used: dict[tuple, int] = defaultdict(int)
        self.buffers: list[torch.Tensor] = []          # [G, m, n] per group
        self.subgrad_buffers: list[torch.Tensor] = []
        self.devices: list[torch.device] = []
        self.where: list[tuple[int, int]] = [(0, 0)] * len(weights)   # (group, slot) per layer
        slots: list[torch.Tensor | None] = [None] * len(weights)
        subgrad_slots: list[torch.Tensor | None] = [None] * len(weights)
        for g, ((shape, dtype, device), members) in enumerate(keys.items()):
            size, start = math.prod(shape), used[(dtype, device)]
            used[(dtype, device)] += len(members) * size
            for flat, buffers, out in ((self.flat, self.buffers, slots),
                                       (self.subgrad_flat, self.subgrad_buffers, subgrad_slots)):
                base = flat[(dtype, device)]
                buffers.append(base[start:start + len(members) * size].view(len(members), *shape))
                for j, i in enumerate(members):
                    _, strides, offset = layouts[i]
                    out[i] = base.as_strided(weights[i].shape, strides,
                                             base.storage_offset() + start + j * size + offset)
            self.devices.append(device)
            for j, i in enumerate(members):
                self.where[i] = (g, j)
        self.slots: list[torch.Tensor] = slots            # type: ignore[assignment]
        self.subgrad_slots: list[torch.Tensor] = subgrad_slots   # type: ignore[assignment]
        self.bases: list[torch.Tensor | None] = [None] * len(self.buffers)  # warm starts

    @staticmethod
    def _signature(weights) -> tuple:
        return tuple((tuple(w.shape), w.dtype, w.device) for w in weights)

    def fits(self, weights: list[torch.Tensor]) -> bool:
        return self._signature(weights) == self.signature

    def layer_basis(self, i: int) -> torch.Tensor | None:
        """Layer i's warm-start basis (a view into its group's), or None where it has none:
        before the first projection, or NaN (never set, or the op's mark of a non-finite
        matrix). Reads the device (a synchronisation); not for every step."""
        g, j = self.where[i]
        if self.bases[g] is None or torch.isnan(self.bases[g][j]).any():
            return None
        return self.bases[g][j]

    def basis_shape(self, i: int) -> tuple[int, ...]:
        """The shape of layer i's warm-start basis: [..., k, k] for its matrices [..., m, n]."""
        buffer = self.buffers[self.where[i][0]]
        k = min(buffer.shape[-2:])
        return (*buffer.shape[1:-2], k, k)

    def set_layer_basis(self, i: int, basis: torch.Tensor) -> None:
        """Sets layer i's warm-start basis (copied to the group's device); ValueError if its
        shape is not ``basis_shape(i)``."""
        g, j = self.where[i]
        buffer = self.buffers[g]
        shape = self.basis_shape(i)
        if tuple(basis.shape) != shape:
            raise ValueError(f"a basis of shape {list(basis.shape)} does not fit a layer whose "
                             f"matrices need {list(shape)}")
        if self.bases[g] is None:
            self.bases[g] = torch.full((buffer.shape[0], *shape), float("nan"),
                                       dtype=torch.float64, device=buffer.device)
        self.bases[g][j].copy_(basis)

    @torch.no_grad()
    def project(self, weights: list[torch.Tensor], energy: float, keep_low: bool,
                keep_subgrad: bool) -> list[torch.Tensor]:
        """One ``lowrank_project_groups`` call per device on the current ``weights``; keeps
        W_low in the matrix buffers and/or U_r V_r^T in the sub-gradient buffers, and returns
        each group's ranks. Runs with check_finite=False: no host synchronisation."""
        torch._foreach_copy_(self.slots, weights)
        ranks: list[torch.Tensor | None] = [None] * len(self.buffers)
        lows, subs, low_buffers, subgrad_buffers = [], [], [], []
        for device in dict.fromkeys(self.devices):
            groups = [g for g, d in enumerate(self.devices) if d == device]
            warm = {}
            if self.warm_start:
                warm = {"basis": [self.bases[g] for g in groups], "return_basis": True}
            low, sub, rank, *bases = svd.lowrank_project_groups(
                [self.buffers[g] for g in groups], energy, check_finite=False, **warm)
            if bases:
                for g, new in zip(groups, bases[0]):
                    self.bases[g] = new
            for g, l, s, r in zip(groups, low, sub, rank):
                lows.append(l)
                subs.append(s)
                low_buffers.append(self.buffers[g])
                subgrad_buffers.append(self.subgrad_buffers[g])
                ranks[g] = r
        if keep_low:
            torch._foreach_copy_(low_buffers, lows)
        if keep_subgrad:
            torch._foreach_copy_(subgrad_buffers, subs)
        return ranks  # type: ignore[return-value]
