"""Training towards low rank, above compression: Trained Rank Pruning (trp.py, TRPRegularizer),
its projection for each scheme (projections.py) on stacked matrix groups (groups.py), and
low-rank training from scratch, ELRT (elrt.py)."""

from .elrt import PENALTY_KINDS, make_lowrank, orthogonality_penalty
from .groups import StackedGroups
from .projections import projection_for
from .trp import TRPRegularizer, unwrap

__all__ = ["TRPRegularizer", "unwrap", "projection_for", "StackedGroups", "make_lowrank",
           "orthogonality_penalty", "PENALTY_KINDS"]
