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

    def __init__(self, weights: list[torch.Tensor], views: MatrixView | list[MatrixView]):
        self.signature = self._signature(weights)
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

    @staticmethod
    def _signature(weights) -> tuple:
        return tuple((tuple(w.shape), w.dtype, w.device) for w in weights)

    def fits(self, weights: list[torch.Tensor]) -> bool:
        return self._signature(weights) == self.signature

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
            low, sub, rank = svd.lowrank_project_groups([self.buffers[g] for g in groups],
                                                        energy, check_finite=False)
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
