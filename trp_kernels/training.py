"""The training run behind ``python -m trp_kernels train``: one configuration, four methods,
a checkpoint every epoch that a resumed run continues from exactly, and a report at the end.

Methods (DESIGN.md section 1):
  baseline  the dense model, trained.
  trp       TRP: projection every ``period`` steps and, with nuclear_weight > 0, the nuclear
            sub-gradient; at the end the trained weights are decomposed by the final rule
            (final_threshold and/or final_energy) with no fine-tuning.
  decomp    the papers' comparison: train a baseline (or load one with ``init``), decompose it
            by energy and/or rank, fine-tune for ``finetune_epochs``.
  lowrank   ELRT: low-rank from step 0 (rank as an int or a fraction of full rank), with an
            orthogonality penalty of weight ``orth_weight``.

Files in the output directory: checkpoint.pt (after every epoch, atomically), model.pt (the
final model, ``export.load_model`` reads it), report.json, report.md and report.png.

Under torchrun (WORLD_SIZE > 1) every process trains its share of each batch in
DistributedDataParallel and rank 0 alone writes files.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from ._checks import SCHEMES
from .checkpoint import CheckpointError, atomic_save, load_file, rng_states, set_rng_states
from .data import DATASETS, ImageData, load_dataset, num_train_batches, test_batches, train_batches
from .decompose import decomposable_layers, decompose_model, never_decomposed
from .export import load_model, lowrank_layers, restore_lowrank_layers, save_model
from .factorization import full_rank
from .lowrank_train import make_lowrank, orthogonality_penalty
from .models import create_model
from .report import model_figures, write_report
from .trp import TRPRegularizer

METHODS = ("baseline", "trp", "decomp", "lowrank")
TRAIN_MODELS = ("resnet20", "resnet32", "resnet56")
LR_SCHEDULES = ("cosine", "step")
# Digits are 8x8: the paper's strides (1, 2, 2) would leave the last stage 2x2 pixels; one
# downsampling step keeps 8x8, 8x8 and 4x4 (docs/training.md explains the choice).
DIGITS_STAGE_STRIDES = (1, 1, 2)
CHECKPOINT_FORMAT = "trp_kernels.checkpoint/1"
CHECKPOINT, MODEL_FILE, REPORT = "checkpoint.pt", "model.pt", "report.json"
# Where a run executes may change when it resumes; what it computes may not.
RESUME_MAY_CHANGE = ("device", "threads")


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the option."""


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "resnet20"
    method: str = "trp"
    scheme: str = "channel"
    energy: float | None = None            # trp: projection energy (0.9 when None);
                                           # decomp: decomposition energy (0.9 when no rank)
    nuclear_weight: float = 3e-4           # trp "+Nu"; 0 turns it off
    period: int = 1                        # trp: project every period steps
    rank: int | float | None = None        # lowrank (required) / decomp: int cap or fraction
    final_threshold: float | None = 5e-2   # trp: the final decomposition's rule
    final_energy: float | None = None
    epochs: int = 15
    finetune_epochs: int = 5               # decomp
    init: str | None = None                # decomp: a model.pt of a trained baseline
    orth_weight: float = 1e-3              # lowrank
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None             # CPU threads for torch; None: see cpu_threads

    # -- checking ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raises ConfigError naming the first impossible option."""
        _choice(self.dataset, DATASETS, "dataset")
        _choice(self.model, TRAIN_MODELS, "model")
        _choice(self.method, METHODS, "method")
        _choice(self.scheme, SCHEMES, "scheme")
        _choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        for name in ("energy", "final_energy"):
            value = getattr(self, name)
            if value is not None and not (_real(value) and 0 < value <= 1):
                raise ConfigError(f"{name} must be in (0, 1], got {value!r}")
        for name in ("nuclear_weight", "weight_decay", "orth_weight"):
            if not (_real(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got "
                                  f"{getattr(self, name)!r}")
        if self.final_threshold is not None and not (_real(self.final_threshold)
                                                     and self.final_threshold >= 0):
            raise ConfigError(f"final_threshold must be a finite number >= 0, got "
                              f"{self.final_threshold!r}")
        if not (_real(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (_real(self.momentum) and 0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        _int_at_least(self.period, 1, "period")
        _int_at_least(self.batch_size, 2, "batch_size")   # BatchNorm needs two images
        _int_at_least(self.seed, 0, "seed")
        _int_at_least(self.finetune_epochs, 0, "finetune_epochs")
        _int_at_least(self.epochs, 0 if self.method == "decomp" and self.init else 1, "epochs")
        if self.threads is not None:
            _int_at_least(self.threads, 1, "threads")
        if self.rank is not None:
            if isinstance(self.rank, bool) or not isinstance(self.rank, numbers.Real):
                raise ConfigError(f"rank must be an int >= 1 or a fraction in (0, 1], got "
                                  f"{self.rank!r}")
            if isinstance(self.rank, numbers.Integral) and self.rank < 1:
                raise ConfigError(f"rank must be >= 1, got {self.rank}")
            if not isinstance(self.rank, numbers.Integral) and not 0 < self.rank <= 1:
                raise ConfigError(f"rank as a fraction of the full rank must be in (0, 1], got "
                                  f"{self.rank}")
        if self.method == "lowrank" and self.rank is None:
            raise ConfigError("method lowrank needs rank (an int, or a fraction of each "
                              "layer's full rank in (0, 1])")
        if self.init is not None and self.method != "decomp":
            raise ConfigError(f"init (a trained baseline to decompose) is for method decomp, "
                              f"not {self.method}")
        if self.method == "decomp" and self.init is None and self.epochs == 0:
            raise ConfigError("method decomp needs epochs >= 1 to train its baseline, or init")
        if self.dataset == "cifar10" and not self.data_dir:
            raise ConfigError("dataset cifar10 needs data_dir: the cifar-10-batches-py directory")

    # -- derived -------------------------------------------------------------------------------
    @property
    def trp_energy(self) -> float:
        return 0.9 if self.energy is None else self.energy

    @property
    def decomp_energy(self) -> float | None:
        return 0.9 if self.energy is None and self.rank is None else self.energy

    @property
    def pretrain_epochs(self) -> int:
        """Epochs before decomp's decomposition (all epochs for the other methods)."""
        if self.method != "decomp":
            return self.epochs
        return 0 if self.init else self.epochs

    @property
    def total_epochs(self) -> int:
        return self.pretrain_epochs + (self.finetune_epochs if self.method == "decomp" else 0)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown options {unknown}")
        return cls(**values)


def _real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _choice(value, choices, name):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _int_at_least(value, low, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")


def arch_kwargs(config: TrainConfig, data: ImageData) -> dict:
    strides = DIGITS_STAGE_STRIDES if config.dataset == "digits" else (1, 2, 2)
    return {"num_classes": data.num_classes, "in_channels": data.in_channels,
            "stage_strides": list(strides)}


# ----------------------------------------------------------------------------------------------
# Preparation: everything that can reject the input, before anything is written.


@dataclass
class Prepared:
    config: TrainConfig
    out_dir: str
    data: ImageData
    device: torch.device
    checkpoint: dict | None       # the run to resume
    init_model: nn.Module | None  # decomp's trained baseline


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a torch device (cpu, cuda, cuda:1, ...)") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu or cuda, got {name!r}")
    return device


def read_checkpoint(out_dir: str) -> dict:
    ckpt = load_file(os.path.join(out_dir, CHECKPOINT), "checkpoint",
                     ("format", "config", "epoch", "model", "lowrank_layers", "optimizer",
                      "scheduler", "rng", "history"))
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {os.path.join(out_dir, CHECKPOINT)} has format "
                              f"{ckpt['format']!r}, this version reads {CHECKPOINT_FORMAT!r}")
    return ckpt


def prepare(config: TrainConfig, out_dir: str, resume: bool = False) -> Prepared:
    """Checks the configuration, the output directory, the data and the files to read, and
    raises ValueError (ConfigError, DataError, CheckpointError) naming the problem. Writes
    nothing. ``resume``: continue the run in ``out_dir``, whose configuration ``config`` must
    repeat (``device`` and ``threads`` may change)."""
    if resume:
        return prepare_resume(out_dir, asdict(config))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"out {out_dir!r} exists and is not a directory")
    taken = [name for name in (CHECKPOINT, MODEL_FILE, REPORT)
             if os.path.exists(os.path.join(out_dir, name))]
    if taken:
        raise ConfigError(f"out {out_dir!r} already holds a run ({', '.join(taken)}); resume it "
                          f"or choose another directory")
    return _prepare(config, out_dir, None)


def prepare_resume(out_dir: str, options: dict | None = None) -> Prepared:
    """``prepare`` for continuing the run in ``out_dir`` with its stored configuration.
    ``options`` (any subset of TrainConfig's fields) must agree with it, except ``device``
    and ``threads``, which they replace."""
    checkpoint = read_checkpoint(out_dir)
    stored = checkpoint["config"]
    options = dict(options or {})
    changed = sorted(k for k, v in options.items()
                     if k not in RESUME_MAY_CHANGE and stored.get(k) != v)
    if changed:
        raise ConfigError(
            f"a resumed run keeps its configuration, but {', '.join(changed)} differ from the "
            f"checkpoint's ({', '.join(f'{k}={stored.get(k)!r}' for k in changed)})")
    config = TrainConfig.from_dict({**stored, **{k: options[k] for k in RESUME_MAY_CHANGE
                                                 if k in options}})
    return _prepare(config, out_dir, checkpoint)


def _prepare(config: TrainConfig, out_dir: str, checkpoint: dict | None) -> Prepared:
    config.validate()
    device = _device(config.device)
    data = load_dataset(config.dataset, config.data_dir)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.batch_size % world_size:
        raise ConfigError(f"batch_size {config.batch_size} must divide evenly among the "
                          f"{world_size} processes")
    if num_train_batches(data, config.batch_size) == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the "
                          f"{len(data.train_y)} training images of {config.dataset}")
    dense = create_model(config.model, **arch_kwargs(config, data))
    largest = max(full_rank(conv.weight.shape, config.scheme)
                  for _, conv in decomposable_layers(dense))
    if isinstance(config.rank, numbers.Integral) and config.rank > largest:
        raise ConfigError(f"rank {config.rank} exceeds the largest full rank ({largest}) of "
                          f"{config.model}'s layers in the {config.scheme} scheme")
    init_model = None
    if config.init is not None and checkpoint is None:
        init_model = load_model(config.init, create_model(config.model,
                                                          **arch_kwargs(config, data)))
        if lowrank_layers(init_model):
            raise ConfigError(f"init {config.init!r} is already compressed; decomp starts from "
                              f"a dense (baseline) model")
    return Prepared(config, out_dir, data, device, checkpoint, init_model)


# ----------------------------------------------------------------------------------------------
# The run.


def make_optimizer(model: nn.Module, config: TrainConfig, epochs: int):
    """SGD with momentum and weight decay, and the learning-rate schedule over ``epochs``:
    cosine annealing, or x0.1 at 50% and 75% of the epochs (the official TRP schedule's
    proportions)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    if config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    else:
        milestones = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    return optimizer, scheduler


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, device, batch_size: int = 500) -> float:
    """Top-1 accuracy (a fraction) on the test split, in eval mode."""
    training = model.training
    model.eval()
    correct = 0
    for x, y in test_batches(data, batch_size, device):
        correct += int((model(x).argmax(1) == y).sum())
    model.train(training)
    return correct / len(data.test_y)


def _distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device of this process, whether this call joined the process group):
    under torchrun (WORLD_SIZE > 1) each process takes the GPU of its LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, joined


def cpu_threads(config: TrainConfig, device: torch.device) -> int | None:
    """torch's CPU thread count for the run (None: leave torch's default). Digits on the CPU
    default to one thread: its 8x8 tensors gain little from more, and torch's spinning
    OpenMP workers slow down 10-20x when other processes share the cores (measured on a
    shared 2-core machine; docs/training.md)."""
    if config.threads is not None:
        return config.threads
    if config.dataset == "digits" and device.type == "cpu":
        return 1
    return None


class Run:
    """The state of one training run between epochs."""

    def __init__(self, prepared: Prepared, progress: bool | None, log):
        self.prepared = prepared
        self.config = config = prepared.config
        self.data = prepared.data
        self.progress = progress
        self.log = log
        self.rank, self.world_size, self.device, self.joined_group = \
            _distributed(prepared.device)
        threads = cpu_threads(config, self.device)
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        self.arch = arch_kwargs(config, self.data)
        model = create_model(config.model, **self.arch)
        # The layers every method acts on; kept by name because the modules get replaced.
        self.targets = [name for name, _ in decomposable_layers(model)]
        self.skip = never_decomposed(model)
        ckpt = prepared.checkpoint
        if ckpt is not None:
            restore_lowrank_layers(model, ckpt["lowrank_layers"])
            model.load_state_dict(ckpt["model"])
        elif prepared.init_model is not None:
            model.load_state_dict(prepared.init_model.state_dict())
        elif config.method == "lowrank":
            make_lowrank(model, config.scheme, config.rank, self.skip)
        self.model = model.to(self.device)
        self.wrapped = self._wrap()
        self.optimizer, self.scheduler = make_optimizer(self.model, config, self._phase_epochs())
        self.trp = None
        if config.method == "trp":
            self.trp = TRPRegularizer(self.wrapped, config.scheme, config.trp_energy,
                                      config.nuclear_weight, config.period, self.skip)
        self.epoch = 0
        self.history: list[dict] = []
        self.dense_test_accuracy = None
        self.train_time = 0.0
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.trp is not None:
                self.trp.load_state_dict(ckpt["trp"])
            set_rng_states(ckpt["rng"])
            self.epoch = ckpt["epoch"]
            self.history = ckpt["history"]
            self.dense_test_accuracy = ckpt.get("dense_test_accuracy")
            self.train_time = ckpt.get("train_time_s", 0.0)
        self.example = self.data.batch_inputs(self.data.test_x[:1], self.device)
        if self.writer:
            os.makedirs(prepared.out_dir, exist_ok=True)

    def _wrap(self) -> nn.Module:
        if self.world_size == 1:
            return self.model
        ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _phase_epochs(self) -> int:
        if self.config.method == "decomp" and lowrank_layers(self.model):
            return self.config.finetune_epochs
        return self.config.pretrain_epochs

    @property
    def writer(self) -> bool:
        return self.rank == 0

    # -- epochs --------------------------------------------------------------------------------
    def decompose_baseline(self) -> None:
        """decomp: the trained baseline's accuracy, then its decomposition by energy/rank."""
        config = self.config
        self.dense_test_accuracy = evaluate(self.model, self.data, self.device)
        report = decompose_model(self.model, config.scheme, energy=config.decomp_energy,
                                 rank=config.rank, skip=self.skip, example_input=self.example)
        if self.writer:
            self.log(f"decomposed the baseline ({100 * self.dense_test_accuracy:.2f}% test "
                     f"accuracy): {report.flops_speedup:.2f}x conv FLOP speed-up, "
                     f"{100 * evaluate(self.model, self.data, self.device):.2f}% before "
                     f"fine-tuning for {config.finetune_epochs} epochs")

    def train_epoch(self) -> dict:
        config, epoch = self.config, self.epoch
        self.wrapped.train()
        batches = train_batches(self.data, config.batch_size, epoch, config.seed, self.device,
                                self.rank, self.world_size)
        # progress None: a bar when stderr is a terminal (tqdm's disable=None); only rank 0.
        show = self.progress if self.writer else False
        bar = tqdm(batches, total=num_train_batches(self.data, config.batch_size),
                   desc=f"epoch {epoch + 1}/{config.total_epochs}", leave=False,
                   disable=None if show is None else not show)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        trp_cpu = 0.0     # CPU time in TRP's hooks: its cost (on CUDA, only the host's part)
        lr = self.optimizer.param_groups[0]["lr"]
        for step, (x, y) in enumerate(bar):
            if self.trp is not None:
                hook_start = time.process_time()
                self.trp.before_forward()
                trp_cpu += time.process_time() - hook_start
            out = self.wrapped(x)
            loss = F.cross_entropy(out, y)
            objective = loss
            if config.method == "lowrank" and config.orth_weight > 0:
                objective = loss + config.orth_weight * orthogonality_penalty(self.model)
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if self.trp is not None:
                hook_start = time.process_time()
                self.trp.after_backward()
                trp_cpu += time.process_time() - hook_start
            self.optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            if step % 10 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{float(loss):.4f}")
        bar.close()
        self.scheduler.step()
        train_loss = float(loss_sum) / seen
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training diverged at epoch {epoch + 1} (loss {train_loss}); "
                                   f"try a smaller --lr")
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
               "train_accuracy": float(correct) / seen}
        if self.trp is not None:
            row["trp_cpu_s"] = trp_cpu
        return row

    def epoch_metrics(self) -> dict:
        """Test accuracy now and, for TRP, of the model decomposed now by the final rule."""
        metrics = {"test_accuracy": evaluate(self.model, self.data, self.device)}
        if self.trp is not None:
            ranks = self.trp.ranks()
            metrics["mean_rank"] = sum(ranks.values()) / max(len(ranks), 1)
            decomposed = copy.deepcopy(self.model)
            report = self._final_decomposition(decomposed)
            metrics["decomposed_test_accuracy"] = evaluate(decomposed, self.data, self.device)
            metrics["decomposed_speedup"] = report.flops_speedup
        return metrics

    def _final_decomposition(self, model: nn.Module):
        config = self.config
        return decompose_model(model, config.scheme, energy=config.final_energy,
                               threshold=config.final_threshold, skip=self.skip,
                               example_input=self.example)

    def log_epoch(self, row: dict) -> None:
        line = (f"epoch {row['epoch']}/{self.config.total_epochs}  loss {row['train_loss']:.4f}  "
                f"train {100 * row['train_accuracy']:.2f}%  test {100 * row['test_accuracy']:.2f}%")
        if "decomposed_test_accuracy" in row:
            line += (f"  decomposed {100 * row['decomposed_test_accuracy']:.2f}% at "
                     f"{row['decomposed_speedup']:.2f}x (mean rank {row['mean_rank']:.1f})")
        line += f"  lr {row['lr']:.3g}  {row['time_s']:.1f}s"
        self.log(line)

    def save_checkpoint(self) -> None:
        atomic_save({
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "config": asdict(self.config),
            "epoch": self.epoch,
            "lowrank_layers": lowrank_layers(self.model),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "trp": None if self.trp is None else self.trp.state_dict(),
            "rng": rng_states(),
            "history": self.history,
            "dense_test_accuracy": self.dense_test_accuracy,
            "train_time_s": self.train_time,
        }, os.path.join(self.prepared.out_dir, CHECKPOINT))

    def fit(self) -> None:
        config = self.config
        while self.epoch < config.total_epochs:
            start = time.perf_counter()
            if (config.method == "decomp" and self.epoch == config.pretrain_epochs
                    and not lowrank_layers(self.model)):
                self.decompose_baseline()
                self.wrapped = self._wrap()
                self.optimizer, self.scheduler = make_optimizer(self.model, config,
                                                                config.finetune_epochs)
            steps_start, steps_cpu = time.perf_counter(), time.process_time()
            row = self.train_epoch()
            # The steps alone, without evaluation; CPU time too, which other processes on
            # shared cores disturb far less than wall time.
            row["train_s"] = time.perf_counter() - steps_start
            row["train_cpu_s"] = time.process_time() - steps_cpu
            if self.writer:
                row.update(self.epoch_metrics())
            self.epoch += 1
            row["time_s"] = time.perf_counter() - start
            self.train_time += row["time_s"]
            if self.writer:
                self.history.append(row)
                self.save_checkpoint()
                self.log_epoch(row)

    # -- the end -------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Final model (TRP: decomposed, no fine-tuning), model.pt and the report files."""
        started = time.perf_counter()
        config = self.config
        model = self.model.eval()
        if config.method == "decomp" and not lowrank_layers(model):
            self.decompose_baseline()   # finetune_epochs == 0: the decomposition alone
        if config.method == "trp":
            self.dense_test_accuracy = evaluate(model, self.data, self.device)
            self._final_decomposition(model)
        if config.method == "baseline":
            self.dense_test_accuracy = evaluate(model, self.data, self.device)
        accuracy = evaluate(model, self.data, self.device)
        dense = create_model(config.model, **self.arch).to(self.device)
        latency_input = self.data.batch_inputs(self.data.test_x[:config.batch_size], self.device)
        report = {
            "method": config.method,
            "scheme": config.scheme,
            "test_accuracy": accuracy,
            "dense_test_accuracy": self.dense_test_accuracy,
            **model_figures(model, dense, set(self.targets), config.scheme, self.example,
                            latency_input),
            "dataset": config.dataset,
            "model": config.model,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "epochs_trained": self.epoch,
            "train_time_s": self.train_time,
            "finish_time_s": time.perf_counter() - started,
            "config": asdict(config),
            "history": self.history,
            "torch": torch.__version__,
            "trp_kernels": __version__,
        }
        save_model(model, os.path.join(self.prepared.out_dir, MODEL_FILE), config.model, self.arch,
                   tuple(self.data.test_x.shape[1:]),
                   {"test_accuracy": accuracy, "flops_speedup": report["flops_speedup"],
                    "method": config.method, "scheme": config.scheme,
                    "normalisation": {"scale": self.data.scale, "mean": list(self.data.mean),
                                      "std": list(self.data.std)}})
        write_report(report, self.prepared.out_dir)
        return report


def run(prepared: Prepared, progress: bool | None = None, log=tqdm.write) -> dict | None:
    """Trains (or resumes) the prepared run to the end and writes its files; returns the report
    (None on the ranks other than 0 under torchrun). KeyboardInterrupt leaves the checkpoint of
    the last completed epoch."""
    threads = torch.get_num_threads()   # a setting of the process: restored on the way out
    run_ = None
    try:
        run_ = Run(prepared, progress, log)
        if run_.writer:
            done = f", resuming after epoch {run_.epoch}" if prepared.checkpoint else ""
            log(f"{prepared.config.method} / {prepared.config.scheme}: {prepared.config.model} on "
                f"{prepared.config.dataset}, {prepared.config.total_epochs} epochs on "
                f"{run_.device}{done}; writing to {prepared.out_dir}")
        run_.fit()
        if not run_.writer:
            return None
        return run_.finish()
    finally:
        torch.set_num_threads(threads)
        if run_ is not None and run_.joined_group:
            dist.destroy_process_group()


def train(config: TrainConfig, out_dir: str, resume: bool = False, progress: bool | None = None,
          log=tqdm.write) -> dict | None:
    """``prepare`` then ``run``: the whole job from Python."""
    return run(prepare(config, out_dir, resume), progress, log)
