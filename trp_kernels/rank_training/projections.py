"""TRP's projection and nuclear sub-gradient for each low-rank scheme (the maths:
docs/design.md, "The schemes"), on stacked groups built once (groups.StackedGroups).

    channel, spatial,  the one matrix view: one ``lowrank_project_groups`` call per device, for
    pointwise          the layers of all three schemes together.
    tucker2            both mode unfoldings of the same current weights, one call each. P_in is
                       formed as (U_r V_r^T)(U_r V_r^T)^T = U_r U_r^T from the sub-gradient the
                       op already returns, so no factor leaves the op.
    decoupled          the per-filter matrices at one rank per layer. The batched op's rank
                       bound is one scalar per call, so a per-layer rank takes two steps: one
                       ``lowrank_project_groups`` call gives every filter's energy rank (all
                       groups at once), then one ``truncated_svd`` per shape group (untruncated)
                       is cut at each layer's shared rank by a mask. Nothing synchronises with
                       the host.

A model that mixes schemes (k x k convs in tucker2 or decoupled, 1x1 convs and linear layers in
pointwise) gets one projection per kind, behind a ``ProjectionSet``.

Every projection object has the same face, so TRPRegularizer never asks which scheme runs:
``compute`` (one SVD pass on the current weights), ``low_flats`` / ``subgrad_flats`` (the flat
buffers a DDP broadcast sends), ``write_low``, ``add_subgrad``, ``layer_ranks`` and, for warm
starts, ``stacks`` (its StackedGroups, each with a tag and the layers it holds), through which
``layer_bases`` / ``load_layer_bases`` read and write every layer's start bases. On a
projection step the sub-gradient comes from the SVD of the weights before the projection, as
in the official TRP code; for the matrix schemes it is also the sub-gradient at the projected
weights (same singular vectors).
"""

from __future__ import annotations

import torch

from ..ops import svd
from ..schemes.geometry import Scheme
from ..schemes.matrix_views import IN_MODE, OUT_MODE, PER_FILTER, MatrixView
from .groups import StackedGroups


class MatrixProjection:
    """channel, spatial and pointwise: one matrix view per weight (``views``: one for all, or a
    list), one ``lowrank_project_groups`` call per device."""

    def __init__(self, weights: list[torch.Tensor], views: MatrixView | list[MatrixView],
                 warm_start: bool = False):
        self.groups = StackedGroups(weights, views, warm_start)
        self.ranks: list[torch.Tensor] | None = None

    def fits(self, weights) -> bool:
        return self.groups.fits(weights)

    def stacks(self):
        return [("", self.groups, range(len(self.groups.where)))]

    def compute(self, weights, energy: float, keep_low: bool, keep_subgrad: bool) -> None:
        self.ranks = self.groups.project(weights, energy, keep_low, keep_subgrad)

    @property
    def low_flats(self) -> list[torch.Tensor]:
        return list(self.groups.flat.values())

    @property
    def subgrad_flats(self) -> list[torch.Tensor]:
        return list(self.groups.subgrad_flat.values())

    def write_low(self, weights) -> None:
        torch._foreach_copy_(weights, self.groups.slots)

    def add_subgrad(self, grads, alpha: float) -> None:
        torch._foreach_add_(grads, self.groups.subgrad_slots, alpha=alpha)

    def layer_ranks(self) -> list:
        """Each layer's rank at the last SVD (the largest over a batch of matrices)."""
        return _layer_ranks(self.groups, self.ranks)


def _layer_ranks(groups: StackedGroups, ranks) -> list[int] | None:
    if ranks is None:
        return None
    host = [r.cpu() for r in ranks]
    return [int(host[g][j].max()) for g, j in groups.where]


class Tucker2Projection:
    """Both mode unfoldings of each weight, gathered from the same current weights into two
    stacked groups (output mode [N, C*kh*kw], input mode [C, N*kh*kw])."""

    def __init__(self, weights: list[torch.Tensor], warm_start: bool = False):
        self.out_mode = StackedGroups(weights, OUT_MODE, warm_start)
        self.in_mode = StackedGroups(weights, IN_MODE, warm_start)
        self.ranks: tuple | None = None

    def fits(self, weights) -> bool:
        return self.out_mode.fits(weights)

    def stacks(self):
        layers = range(len(self.out_mode.where))
        return [("out", self.out_mode, layers), ("in", self.in_mode, layers)]

    def compute(self, weights, energy: float, keep_low: bool, keep_subgrad: bool) -> None:
        # The input mode's U_r V_r^T is needed for P_in even without the nuclear term.
        in_ranks = self.in_mode.project(weights, energy, keep_low=False, keep_subgrad=True)
        out_ranks = self.out_mode.project(weights, energy, keep_low=keep_low,
                                          keep_subgrad=keep_subgrad)
        self.ranks = (in_ranks, out_ranks)
        if keep_low:
            # W x_N P_out (now in the output-mode buffers), seen in the input mode, times P_in.
            torch._foreach_copy_(self.in_mode.slots, self.out_mode.slots)
            products = []
            for sub, low in zip(self.in_mode.subgrad_buffers, self.in_mode.buffers):
                products.append(torch.bmm(torch.bmm(sub, sub.mT), low))
            torch._foreach_copy_(self.in_mode.buffers, products)

    @property
    def low_flats(self) -> list[torch.Tensor]:
        return list(self.in_mode.flat.values())

    @property
    def subgrad_flats(self) -> list[torch.Tensor]:
        return [*self.out_mode.subgrad_flat.values(), *self.in_mode.subgrad_flat.values()]

    def write_low(self, weights) -> None:
        torch._foreach_copy_(weights, self.in_mode.slots)

    def add_subgrad(self, grads, alpha: float) -> None:
        torch._foreach_add_(grads, self.out_mode.subgrad_slots, alpha=alpha)
        torch._foreach_add_(grads, self.in_mode.subgrad_slots, alpha=alpha)

    def layer_ranks(self) -> list | None:
        """(r_in, r_out) of each layer at the last SVD."""
        if self.ranks is None:
            return None
        r_in = _layer_ranks(self.in_mode, self.ranks[0])
        r_out = _layer_ranks(self.out_mode, self.ranks[1])
        return list(zip(r_in, r_out))


class DecoupledProjection(MatrixProjection):
    """Every filter of a weight as a C x (kh*kw) matrix: buffers [G, N, C, kh*kw], also seen
    as [G*N, C, kh*kw] so that the rank-r products are single ``bmm`` calls. Gathering,
    writing and the flat buffers are the matrix projection's; the rank is shared per layer."""

    def __init__(self, weights: list[torch.Tensor], warm_start: bool = False):
        super().__init__(weights, PER_FILTER, warm_start)
        # Built once: per group the flat batch views and the positions 0..k-1 of the singular
        # values, [1, 1, k], for the rank masks.
        self._flat_buffers = [b.view(-1, *b.shape[-2:]) for b in self.groups.buffers]
        self._flat_subgrads = [b.view(-1, *b.shape[-2:]) for b in self.groups.subgrad_buffers]
        self._positions = [torch.arange(min(b.shape[-2:]), device=b.device).view(1, 1, -1)
                           for b in self.groups.buffers]

    def compute(self, weights, energy: float, keep_low: bool, keep_subgrad: bool) -> None:
        groups = self.groups
        # Every filter's energy rank (one op call for all groups); its outputs are not kept.
        filter_ranks = groups.project(weights, energy, keep_low=False, keep_subgrad=False)
        lows, subs, shared_ranks = [], [], []
        for g, ranks in enumerate(filter_ranks):
            G, N = ranks.shape
            U, S, V, _ = svd.truncated_svd(self._flat_buffers[g], check_finite=False)
            shared = ranks.amax(-1, keepdim=True)                          # [G, 1]
            keep = (self._positions[g] < shared.unsqueeze(-1)).expand(G, N, -1)   # [G, N, k]
            keep = keep.reshape(G * N, 1, -1)
            Vt = V.mT
            if keep_low:
                lows.append(torch.bmm(U * (S.unsqueeze(-2) * keep), Vt))
            if keep_subgrad:
                subs.append(torch.bmm(U * keep, Vt))
            shared_ranks.append(shared)
        if keep_low:
            torch._foreach_copy_(self._flat_buffers, lows)
        if keep_subgrad:
            torch._foreach_copy_(self._flat_subgrads, subs)
        self.ranks = shared_ranks

    def layer_ranks(self) -> list | None:
        """Each layer's shared rank at the last SVD."""
        return _layer_ranks(self.groups, self.ranks)


class ProjectionSet:
    """Projections of disjoint sets of the layers (``parts``: (layer indices, projection)),
    with the face of one: each call goes to every part with its layers' tensors."""

    def __init__(self, parts):
        self.parts = parts

    def fits(self, weights) -> bool:
        return all(p.fits([weights[i] for i in indices]) for indices, p in self.parts)

    def stacks(self):
        return [(tag, stack, [indices[i] for i in layers])
                for indices, p in self.parts for tag, stack, layers in p.stacks()]

    def compute(self, weights, energy: float, keep_low: bool, keep_subgrad: bool) -> None:
        for indices, p in self.parts:
            p.compute([weights[i] for i in indices], energy, keep_low, keep_subgrad)

    @property
    def low_flats(self) -> list[torch.Tensor]:
        return [flat for _, p in self.parts for flat in p.low_flats]

    @property
    def subgrad_flats(self) -> list[torch.Tensor]:
        return [flat for _, p in self.parts for flat in p.subgrad_flats]

    def write_low(self, weights) -> None:
        for indices, p in self.parts:
            p.write_low([weights[i] for i in indices])

    def add_subgrad(self, grads, alpha: float) -> None:
        for indices, p in self.parts:
            p.add_subgrad([grads[i] for i in indices], alpha)

    def layer_ranks(self) -> list | None:
        ranks: list = [None] * sum(len(indices) for indices, _ in self.parts)
        for indices, p in self.parts:
            part = p.layer_ranks()
            if part is None:
                return None
            for i, rank in zip(indices, part):
                ranks[i] = rank
        return ranks


def layer_bases(projection) -> dict[tuple[int, str], torch.Tensor]:
    """Every warm-start basis the projection holds: (layer index, tag) -> basis (a view)."""
    out = {}
    for tag, stack, layers in projection.stacks():
        for local, i in enumerate(layers):
            basis = stack.layer_basis(local)
            if basis is not None:
                out[(i, tag)] = basis
    return out


def layer_signatures(projection) -> dict[int, tuple]:
    """(shape, dtype, device) of every layer's weight when the projection was built."""
    return {i: stack.signature[local] for _, stack, layers in projection.stacks()
            for local, i in enumerate(layers)}


def layer_basis_shape(projection, key: tuple[int, str]) -> tuple[int, ...] | None:
    """The shape of the basis (layer index, tag) needs, None if the projection has no such."""
    for tag, stack, layers in projection.stacks():
        for local, i in enumerate(layers):
            if (i, tag) == key:
                return stack.basis_shape(local)
    return None


def load_layer_bases(projection, bases: dict[tuple[int, str], torch.Tensor]) -> None:
    """Sets the warm-start bases given as in ``layer_bases`` (copies; missing ones stay)."""
    for tag, stack, layers in projection.stacks():
        for local, i in enumerate(layers):
            if (i, tag) in bases:
                stack.set_layer_basis(local, bases[(i, tag)])


def projection_for(schemes: list[Scheme], weights: list[torch.Tensor], warm_start: bool = False):
    """The projection of ``weights`` (4-D conv weights; a linear layer's as its 1x1 conv view),
    each in its scheme (entries of the scheme registry): the matrix schemes' layers in one
    MatrixProjection, tucker2's and decoupled's in their own; one object, or a ProjectionSet.
    ``warm_start``: every SVD pass starts from the previous one's bases."""
    kinds: dict[str, list[int]] = {}
    for i, s in enumerate(schemes):
        kinds.setdefault(s.name if s.name in ("tucker2", "decoupled") else "matrix", []).append(i)
    parts = []
    for kind, indices in kinds.items():
        subset = [weights[i] for i in indices]
        if kind == "tucker2":
            parts.append((indices, Tucker2Projection(subset, warm_start)))
        elif kind == "decoupled":
            parts.append((indices, DecoupledProjection(subset, warm_start)))
        else:
            parts.append((indices, MatrixProjection(subset, [schemes[i].views[0]
                                                             for i in indices], warm_start)))
    return parts[0][1] if len(parts) == 1 else ProjectionSet(parts)
