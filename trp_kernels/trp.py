"""Trained Rank Pruning (Xu et al. 2019) as two hooks around any training step.

Every decomposable conv W (docs/design.md section 1) is viewed as the matrix M of the scheme.
(B) Every ``period`` steps, before the forward pass, M <- U_r S_r V_r^T with r the energy rank.
(A) Every step with ``nuclear_weight`` lambda > 0 ("+Nu"), after the backward pass,
    grad(W) += lambda * U_r V_r^T, the sub-gradient of lambda * ||M||_* restricted to rank r.

    trp = TRPRegularizer(model, scheme="channel", energy=0.9, nuclear_weight=3e-4, period=1)
    for x, y in loader:
        trp.before_forward()             # projects on every period-th step
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        trp.after_backward()             # adds the nuclear sub-gradient; counts the step
        optimizer.step()
    report = trp.decompose(threshold=5e-2)   # the trained model, factorised; no fine-tuning

Layers are grouped by matrix shape into stacked groups, and all groups of a model go to one
``lowrank_project_groups`` call (one batched SVD per shape, pooled over the threads). On
a projection step the same call also yields the sub-gradient (as in the official code), so a
TRP+Nu step costs one batched SVD per shape whatever the period; with lambda = 0 the off steps
cost nothing. The ops run with ``check_finite=False``: no host synchronisation in a step.

Under DistributedDataParallel every process holds the same weights, so every process computes
the same projection. By default the projected weights and the nuclear sub-gradients are also
broadcast from rank 0 (one collective per projection and one per sub-gradient step), so replicas
stay bit-identical even with a nondeterministic SVD.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.distributed as dist
from torch import nn

from . import _checks
from .decompose import (DecompositionReport, decompose_model, decomposable_layers,
                        is_decomposable)
from .factorization import matrix_to_weight, weight_to_matrix
from .svd import project_matrices


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _energy(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not 0.0 < value <= 1.0:
        raise ValueError(f"energy must be a number in (0, 1], got {value!r}")
    return float(value)


class TRPRegularizer:
    """TRP's projection and nuclear-norm sub-gradient for the decomposable convs of ``model``
    (an nn.Module or a DistributedDataParallel wrapping one).

    scheme: "channel" or "spatial" (the matrix view of each weight).
    energy: the energy e in (0, 1] that picks each layer's rank at a projection (official 0.9).
    nuclear_weight: lambda >= 0 of the nuclear-norm sub-gradient (official 3e-4; 0 turns "+Nu"
        off).
    period: project every ``period`` steps (official 1).
    skip: layer names left dense; None means the model's ``never_decomposed`` (the first conv
        of this library's ResNets).
    broadcast: copy rank 0's projected weights (after a projection) and sub-gradients (before
        they are added) to every process; None means
        "when torch.distributed is initialised with more than one process".
    """

    def __init__(self, model: nn.Module, scheme: str = "channel", energy: float = 0.9,
                 nuclear_weight: float = 3e-4, period: int = 1, skip=None,
                 broadcast: bool | None = None):
        self.scheme = _checks.scheme(scheme)
        self.energy = _energy(energy)
        if isinstance(nuclear_weight, bool) or not isinstance(nuclear_weight, numbers.Real) \
                or not math.isfinite(nuclear_weight) or nuclear_weight < 0:
            raise ValueError(f"nuclear_weight must be a finite number >= 0, got {nuclear_weight!r}")
        self.nuclear_weight = float(nuclear_weight)
        if isinstance(period, bool) or not isinstance(period, numbers.Integral) or period < 1:
            raise ValueError(f"period must be an int >= 1, got {period!r}")
        self.period = int(period)
        self.model = unwrap(model)
        self.layers = decomposable_layers(self.model, skip)
        if not self.layers:
            raise ValueError("model has no decomposable conv (nn.Conv2d, groups 1, kernel "
                             "larger than 1x1) outside skip; TRP has nothing to act on")
        if broadcast is None:
            broadcast = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.broadcast = bool(broadcast)
        self.step = 0               # completed training steps (after_backward calls)
        self._subgrads: list[torch.Tensor] | None = None   # of the current weights, if known
        self._ranks: list[torch.Tensor] | None = None

    # -- the two hooks -------------------------------------------------------------------------
    def before_forward(self) -> None:
        """Projects every layer when this step is a projection step (step % period == 0)."""
        if self.step % self.period == 0:
            self.project()

    def after_backward(self) -> None:
        """Adds lambda * U_r V_r^T to each layer's gradient (when lambda > 0) and counts the
        step. Call it after ``loss.backward()`` (and after DDP's gradient all-reduce, which
        backward completes) and before ``optimizer.step()``."""
        if self.nuclear_weight > 0:
            subgrads = self._subgrads
            if subgrads is None:
                subgrads = self._svd(want_low=False)[1]
            if self.broadcast:
                # The sub-gradient is added after DDP's all-reduce: rank 0's, so replicas get
                # the same update even where the SVD is not bitwise reproducible.
                self._broadcast(subgrads)
            for (_, conv), subgrad in zip(self.layers, subgrads):
                if conv.weight.grad is None:
                    conv.weight.grad = torch.zeros_like(conv.weight)
                conv.weight.grad.add_(subgrad.to(conv.weight.grad.dtype),
                                      alpha=self.nuclear_weight)
        self._subgrads = None
        self.step += 1

    # -- the operations ------------------------------------------------------------------------
    @torch.no_grad()
    def project(self) -> None:
        """W <- U_r S_r V_r^T for every layer, r by the energy rule (whatever the step)."""
        low, subgrads = self._svd(want_sub=self.nuclear_weight > 0)
        for (_, conv), W_low in zip(self.layers, low):
            conv.weight.copy_(W_low)
        if self.broadcast:
            self._broadcast([conv.weight for _, conv in self.layers])
        # The projected weights are exactly rank r with the same singular vectors, so this
        # SVD's U_r V_r^T is also the sub-gradient at the weights this step trains with.
        self._subgrads = subgrads if self.nuclear_weight > 0 else None

    @torch.no_grad()
    def _svd(self, want_low: bool = True, want_sub: bool = True
             ) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """(W_low, subgrad) of every layer, shaped like its weight, from one batched
        projection per matrix shape; the half not wanted is None (not reshaped)."""
        matrices = []
        for _, conv in self.layers:
            W = conv.weight.detach()
            if W.dtype not in (torch.float32, torch.float64):
                W = W.float()   # the SVD ops take float32/float64; half weights go via float32
            matrices.append(weight_to_matrix(W, self.scheme))
        results = project_matrices(matrices, energy=self.energy, check_finite=False)
        shapes = [conv.weight.shape for _, conv in self.layers]
        self._ranks = [result.rank for result in results]
        low = ([matrix_to_weight(r.W_low, shape, self.scheme) for r, shape in zip(results, shapes)]
               if want_low else None)
        subgrads = ([matrix_to_weight(r.subgrad, shape, self.scheme)
                     for r, shape in zip(results, shapes)] if want_sub else None)
        return low, subgrads

    @torch.no_grad()
    def _broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values of ``tensors`` (same dtype) into every process, one collective."""
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    # -- what it has done ----------------------------------------------------------------------
    def ranks(self) -> dict[str, int]:
        """Each layer's energy rank at the last SVD (projection or sub-gradient); empty before
        the first. Reading them synchronises with the device."""
        if self._ranks is None:
            return {}
        return {name: int(r) for (name, _), r in zip(self.layers, self._ranks)}

    def decompose(self, energy=None, threshold=None, rank=None,
                  example_input: torch.Tensor | None = None) -> DecompositionReport:
        """Replaces this regularizer's layers (only those) by LowRankConv2d in place, by the rank
        rule given, and returns the report; the end of TRP training. Unwrap a DDP model first
        if you keep training it: DDP does not follow replaced parameters."""
        mine = {name for name, _ in self.layers}
        others = [name for name, m in self.model.named_modules()
                  if is_decomposable(m) and name not in mine]
        return decompose_model(self.model, self.scheme, energy=energy, threshold=threshold,
                               rank=rank, skip=others, example_input=example_input)

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self._subgrads = None
