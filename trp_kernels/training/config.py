"""The configuration of a training run: every option of ``python -m trp_kernels train`` as a
field, and its validation. Option values are checked by the library's own checks (ops/checks.py);
what each method needs besides is checked by the method (methods.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..compression import latency
from ..schemes import geometry
from ..ops import checks
from .data import DATASETS
from ..rank_training import PENALTY_KINDS
from .errors import ConfigError
from .methods import METHODS, method_class

TRAIN_MODELS = ("resnet20", "resnet32", "resnet56", "mobilenetv2")
SCHEMES = tuple(geometry.SCHEMES)        # the schemes' one registry
LR_SCHEDULES = ("cosine", "step")
# Digits are 8x8: the paper's strides (1, 2, 2) would leave the last stage 2x2 pixels; one
# downsampling step keeps 8x8, 8x8 and 4x4 (docs/training.md explains the choice).
DIGITS_STAGE_STRIDES = (1, 1, 2)


@dataclass
class TrainConfig:
    dataset: str = "digits"                # or cifar10, a folder of one sub-folder per class,
                                           # or package.module:callable returning a Dataset
    data_dir: str | None = None
    model: str = "resnet20"                # or "package.module:callable", a model of your own
    model_kwargs: dict = field(default_factory=dict)   # its keyword arguments (over the
                                           # trainer's own for this library's models)
    method: str = "trp"
    scheme: str = "channel"
    pointwise: bool = False                # also the 1x1 convs and linear layers (scheme
                                           # "pointwise"); scheme="pointwise": those alone
    energy: float | None = None            # trp: projection energy (0.9 when None);
                                           # decomp: decomposition energy (0.9 when no rank)
    nuclear_weight: float = 3e-4           # trp "+Nu"; 0 turns it off
    period: int = 1                        # trp: project every period steps
    rank: int | float | tuple | None = None   # lowrank (required) / decomp: int cap or
                                           # fraction; tucker2 also a pair (r_in, r_out)
    final_threshold: float | None = 5e-2   # trp: the final decomposition's rule
    final_energy: float | None = None
    target_speedup: float | None = None    # trp / decomp / lowrank: a conv FLOP budget (the
                                           # ranks give a speed-up >= t); trp adapts its energy
    rank_multiple: int = 1                 # every decomposed rank rounded up to a multiple
    measure: str | None = None             # trp / decomp: "torch" or "onnxruntime", keep each
                                           # layer dense or factorised by measured latency
    epochs: int = 15
    finetune_epochs: int = 5               # decomp
    init: str | None = None                # decomp: a model.pt of a trained baseline
    orth_weight: float = 1e-3              # lowrank: weight of the orthogonality penalty
    penalty_kind: str | None = None        # lowrank: "so" or "dso"; None: the scheme's
                                           # default ("dso" for tucker2, "so" otherwise)
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None             # CPU threads for torch; None: see loop.cpu_threads

    # -- checking ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raises ConfigError naming the first impossible option."""
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(f"dataset must be {', '.join(DATASETS)}, a folder of one "
                              f"sub-folder per class or package.module:callable, got "
                              f"{self.dataset!r}", ["dataset"])
        if not is_model_reference(self.model):
            _choice(self.model, TRAIN_MODELS, "model", "or package.module:callable")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a dict of keyword arguments, got "
                              f"{self.model_kwargs!r}", ["model_kwargs"])
        _choice(self.method, METHODS, "method")
        _check("scheme", geometry.scheme, self.scheme)
        if not isinstance(self.pointwise, bool):
            raise ConfigError(f"pointwise must be a bool, got {self.pointwise!r}", ["pointwise"])
        _choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        for name in ("energy", "final_energy"):
            if getattr(self, name) is not None:
                _check(name, checks.energy, getattr(self, name), name)
        for name in ("nuclear_weight", "weight_decay", "orth_weight"):
            _check(name, checks.non_negative, getattr(self, name), name)
        if self.final_threshold is not None:
            _check("final_threshold", checks.non_negative, self.final_threshold,
                   "final_threshold")
        if not (checks.is_finite_real(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr!r}", ["lr"])
        if not (checks.is_finite_real(self.momentum) and 0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}",
                              ["momentum"])
        _check("period", checks.int_at_least, self.period, 1, "period")
        # BatchNorm needs two images
        _check("batch_size", checks.int_at_least, self.batch_size, 2, "batch_size")
        _check("seed", checks.int_at_least, self.seed, 0, "seed")
        _check("finetune_epochs", checks.int_at_least, self.finetune_epochs, 0,
               "finetune_epochs")
        method = method_class(self.method)
        _check("epochs", checks.int_at_least, self.epochs, method.min_epochs(self), "epochs")
        if self.threads is not None:
            _check("threads", checks.int_at_least, self.threads, 1, "threads")
        if self.penalty_kind is not None:
            _choice(self.penalty_kind, PENALTY_KINDS, "penalty_kind")
        _check("rank", geometry.scheme(self.scheme).check_rank_spec, self.rank, "rank")
        if self.target_speedup is not None:
            _check("target_speedup", checks.target_speedup, self.target_speedup)
        _check("rank_multiple", checks.rank_multiple, self.rank_multiple)
        _check("measure", latency.meter, self.measure)   # also: is onnxruntime installed
        method.check(self)
        if self.dataset == "cifar10" and not self.data_dir:
            raise ConfigError("dataset cifar10 needs data_dir: the cifar-10-batches-py "
                              "directory", ["dataset", "data_dir"])

    # -- derived -------------------------------------------------------------------------------
    @property
    def rank_spec(self):
        """The rank as the scheme takes it (a JSON-stored pair comes back as a tuple)."""
        return geometry.scheme(self.scheme).check_rank_spec(self.rank, "rank")

    @property
    def trp_energy(self) -> float:
        return 0.9 if self.energy is None else self.energy

    @property
    def decomp_energy(self) -> float | None:
        if self.energy is None and self.rank is None and self.target_speedup is None:
            return 0.9
        return self.energy

    @property
    def pretrain_epochs(self) -> int:
        """Epochs before decomp's decomposition (all epochs for the other methods)."""
        return method_class(self.method).pretrain_epochs(self)

    @property
    def total_epochs(self) -> int:
        return method_class(self.method).total_epochs(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown options {unknown}", unknown)
        return cls(**values)


def _check(option: str, check, *args) -> None:
    """A library check of ``option``'s value, its ValueError/TypeError turned into a
    ConfigError (same message)."""
    try:
        check(*args)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), [option]) from None


def _choice(value, choices, name, alternative=""):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}"
                          f"{' ' + alternative if alternative else ''}, got {value!r}", [name])


def is_model_reference(model) -> bool:
    """Whether ``model`` names a callable to import ("package.module:callable") rather than
    one of the trainer's models."""
    return isinstance(model, str) and ":" in model
