"""Trained Rank Pruning (Xu et al. 2019) as two hooks around any training step: the projection
every ``period`` steps before the forward pass, and the nuclear-norm sub-gradient ("+Nu") after
the backward pass (the method: docs/design.md, "The method"; each scheme's projection:
"The schemes").

    trp = TRPRegularizer(model, scheme="channel", energy=0.9, nuclear_weight=3e-4, period=1)
    for x, y in loader:
        trp.before_forward()             # projects on every period-th step
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        trp.after_backward()             # adds the nuclear sub-gradient; counts the step
        optimizer.step()
    report = trp.decompose(threshold=5e-2)   # the trained model, factorised; no fine-tuning

The layers are grouped by matrix shape once, at construction (groups.StackedGroups), and all
groups go to one ``lowrank_project_groups`` call (one batched SVD per shape, pooled over the
threads); gathering the weights and writing the results back are one ``torch._foreach_*`` op
each, so a step is a handful of tensor ops whatever the depth of the model. On a projection
step the same call also yields the sub-gradient (as in the official code), so a TRP+Nu step
costs one batched SVD per shape whatever the period; with lambda = 0 the off steps cost
nothing. The ops run with ``check_finite=False``: no host synchronisation in a step.
Tucker-2 and network decoupling project differently (two mode unfoldings; per-filter matrices
at one rank per layer): projections.py holds each scheme's projection.

Warm start (``warm_start=True``, the default): each SVD pass starts from the bases the previous
one returned, one per layer (two for tucker2), kept on the layer's device and saved in
``state_dict()``, so that a resumed run computes exactly what the uninterrupted one would. The
ranks are those of a cold start and the projected weights agree to the float tolerance of the
SVD contract; where a start does not help, the op solves cold (docs/svd_paths.md, "Warm
start"). A layer whose shape, dtype or device changes loses its basis.

Under DistributedDataParallel every process holds the same weights, so every process computes
the same projection. By default the projected weights and the nuclear sub-gradients are also
broadcast from rank 0 (one collective per projection and one per sub-gradient step), so replicas
stay bit-identical even with a nondeterministic SVD.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..compression import DecompositionReport, decompose_model, decomposable_layers
from ..compression.selection import layer_scheme
from ..ops import checks
from ..schemes import geometry
from ..schemes.matrix_views import weight_as_conv
from .projections import (layer_basis_shape, layer_bases, layer_signatures, load_layer_bases,
                          projection_for)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class TRPRegularizer:
    """TRP's projection and nuclear-norm sub-gradient for the decomposable convs of ``model``
    (an nn.Module or a DistributedDataParallel wrapping one).

    scheme: "channel", "spatial", "tucker2" or "decoupled" (projections.py: what each
        projects), or "pointwise" for the 1x1 convs and linear layers alone.
    energy: the energy e in (0, 1] that picks each layer's rank at a projection (official 0.9).
    nuclear_weight: lambda >= 0 of the nuclear-norm sub-gradient (official 3e-4; 0 turns "+Nu"
        off).
    period: project every ``period`` steps (official 1).
    skip: layer names left dense; None means the model's ``never_decomposed`` (the first conv
        of this library's ResNets).
    broadcast: copy rank 0's projected weights (after a projection) and sub-gradients (before
        they are added) to every process; None means
        "when torch.distributed is initialised with more than one process".
    pointwise: also the 1x1 convs (groups 1) and linear layers, in scheme "pointwise" (their
        weights W [N, C] are projected like channel's matrices, in the same batched call for
        the matrix schemes).
    warm_start: start each SVD from the previous one's bases (see above); False solves every
        projection from scratch.
    """

    def __init__(self, model: nn.Module, scheme: str = "channel", energy: float = 0.9,
                 nuclear_weight: float = 3e-4, period: int = 1, skip=None,
                 broadcast: bool | None = None, pointwise: bool = False,
                 warm_start: bool = True):
        self.scheme = geometry.scheme(scheme).name
        self.pointwise = checks.flag(pointwise, "pointwise")
        self.warm_start = checks.flag(warm_start, "warm_start")
        self.energy = energy
        self.nuclear_weight = checks.non_negative(nuclear_weight, "nuclear_weight")
        self.period = checks.int_at_least(period, 1, "period")
        self.model = unwrap(model)
        self.layers = decomposable_layers(self.model, skip, scheme=self.scheme,
                                          pointwise=pointwise)
        if not self.layers:
            what = ("1x1 conv or linear layer" if self.scheme == "pointwise" else
                    "decomposable conv (nn.Conv2d, groups 1, kernel larger than 1x1)"
                    + (", 1x1 conv or linear layer" if pointwise else ""))
            raise ValueError(f"model has no {what} outside skip; TRP has nothing to act on")
        self._schemes = [geometry.scheme(layer_scheme(m, self.scheme)) for _, m in self.layers]
        if broadcast is None:
            broadcast = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.broadcast = bool(broadcast)
        self.step = 0               # completed training steps (after_backward calls)
        self._projection = projection_for(self._schemes, self._weights(), self.warm_start)
        self._subgrads_ready = False   # the sub-gradient buffers hold the current weights'

    @property
    def energy(self) -> float:
        """The energy of the projections' rank rule; may change between steps (an epoch-end
        schedule, say): the next projection uses the new value."""
        return self._energy

    @energy.setter
    def energy(self, value) -> None:
        self._energy = checks.energy(value)

    def _weights(self) -> list[torch.Tensor]:
        """The layers' weights as 4-D conv weights (a linear layer's as its 1x1 conv view)."""
        return [weight_as_conv(layer.weight) for _, layer in self.layers]

    def _grads(self) -> list[torch.Tensor]:
        """The weights' gradients (zeros where there is none yet), shaped like ``_weights``."""
        for _, layer in self.layers:
            if layer.weight.grad is None:
                layer.weight.grad = torch.zeros_like(layer.weight)
        return [weight_as_conv(layer.weight.grad) for _, layer in self.layers]

    def _current_projection(self):
        """The weights and their projection (stacked groups), rebuilt if the weights moved or
        changed dtype or shape since (model.to(...) after construction); the warm-start bases
        of the layers that did not change are kept."""
        weights = self._weights()
        if not self._projection.fits(weights):
            before = layer_signatures(self._projection)
            kept = {(i, tag): basis for (i, tag), basis in layer_bases(self._projection).items()
                    if before[i] == (tuple(weights[i].shape), weights[i].dtype, weights[i].device)}
            self._projection = projection_for(self._schemes, weights, self.warm_start)
            load_layer_bases(self._projection, kept)
        return weights, self._projection

    # -- the two hooks -------------------------------------------------------------------------
    def before_forward(self) -> None:
        """Projects every layer when this step is a projection step (step % period == 0)."""
        if self.step % self.period == 0:
            self.project()

    @torch.no_grad()
    def after_backward(self) -> None:
        """Adds lambda * U_r V_r^T to each layer's gradient (when lambda > 0) and counts the
        step. Call it after ``loss.backward()`` (and after DDP's gradient all-reduce, which
        backward completes) and before ``optimizer.step()``."""
        if self.nuclear_weight > 0:
            weights, projection = self._current_projection()
            if not self._subgrads_ready:
                projection.compute(weights, self.energy, keep_low=False, keep_subgrad=True)
            if self.broadcast:
                # The sub-gradient is added after DDP's all-reduce: rank 0's, so replicas get
                # the same update even where the SVD is not bitwise reproducible.
                self._broadcast(projection.subgrad_flats)
            projection.add_subgrad(self._grads(), self.nuclear_weight)
        self._subgrads_ready = False
        self.step += 1

    # -- the operations ------------------------------------------------------------------------
    @torch.no_grad()
    def project(self) -> None:
        """Projects every layer now (whatever the step): the scheme's projection
        (projections.py), its ranks by the energy rule."""
        weights, projection = self._current_projection()
        want_subgrad = self.nuclear_weight > 0
        projection.compute(weights, self.energy, keep_low=True, keep_subgrad=want_subgrad)
        if self.broadcast:
            self._broadcast(projection.low_flats)
        projection.write_low(weights)
        # The sub-gradient of this step is this SVD's (of the weights before the projection),
        # as in the official code; for the matrix schemes the projected weights are exactly
        # rank r with the same singular vectors, so it is also the one at the new weights.
        self._subgrads_ready = want_subgrad

    @staticmethod
    def _broadcast(flats: list) -> None:
        """Rank 0's values of the stacked buffers into every process: one collective each
        (one per device and dtype of the layers and per mode, usually one or two)."""
        for tensor in flats:
            dist.broadcast(tensor, src=0)

    # -- what it has done ----------------------------------------------------------------------
    def ranks(self) -> dict:
        """Each layer's rank at the last SVD (projection or sub-gradient): the energy rank, a
        pair (r_in, r_out) for tucker2, the layer's shared rank for decoupled; empty before
        the first. Reading them synchronises with the device."""
        ranks = self._projection.layer_ranks()
        if ranks is None:
            return {}
        return {name: rank for (name, _), rank in zip(self.layers, ranks)}

    def decompose(self, energy=None, threshold=None, rank=None,
                  example_input: torch.Tensor | None = None, target_speedup=None,
                  rank_multiple=1, measure=None) -> DecompositionReport:
        """Replaces this regularizer's layers (only those) by LowRankConv2d in place, by the rank
        rule given or by the FLOP budget ``target_speedup`` (with ``rank_multiple`` and
        ``measure``: ``decompose_model``'s options, which check them), and returns the report;
        the end of TRP training. Unwrap a DDP model first if you keep training it: DDP does not
        follow replaced parameters."""
        return decompose_model(self.model, self.scheme, energy=energy, threshold=threshold,
                               rank=rank, example_input=example_input,
                               target_speedup=target_speedup, rank_multiple=rank_multiple,
                               measure=measure, layers=[name for name, _ in self.layers],
                               pointwise=self.pointwise)

    def _basis_keys(self) -> dict[tuple[int, str], str]:
        """(layer index, tag) of every basis the projection may hold -> its state_dict key: the
        layer's name, with the tag (tucker2's "out" / "in" mode) after a colon."""
        return {(i, tag): self.layers[i][0] + (f":{tag}" if tag else "")
                for tag, _, layers in self._projection.stacks() for i in layers}

    def state_dict(self) -> dict:
        """The step count and, with warm starts, every layer's basis (``"bases"``: key -> a
        float64 tensor on the layer's device): what a resumed run needs to compute exactly what
        the uninterrupted one would."""
        state = {"step": self.step}
        if self.warm_start:
            keys = self._basis_keys()
            state["bases"] = {keys[key]: basis.clone()
                              for key, basis in layer_bases(self._projection).items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restores ``state_dict()``'s state. Bases of layers this regularizer does not have,
        or of another shape, are left out (those layers start cold)."""
        self.step = int(state["step"])
        self._subgrads_ready = False
        bases = state.get("bases", {}) if self.warm_start else {}
        if not isinstance(bases, dict):
            raise TypeError(f"state['bases'] must be a dict, got {type(bases).__name__}")
        by_name = {name: key for key, name in self._basis_keys().items()}
        fitting = {}
        for name, basis in bases.items():
            key = by_name.get(name)
            if key is not None and layer_basis_shape(self._projection, key) == tuple(basis.shape):
                fitting[key] = basis
        load_layer_bases(self._projection, fitting)
