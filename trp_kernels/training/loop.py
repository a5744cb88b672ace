"""The training loop: one ``Run`` holds the state between epochs and calls the method's hooks
(methods.py); ``run`` and ``train`` drive it to the end and write the files."""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from ..compression import decomposable_layers, restore_lowrank, save_model
from . import distributed
from .checkpoints import MODEL_FILE, save_checkpoint, set_rng_states
from .config import TrainConfig
from .data import num_train_batches, train_batches
from .errors import TrainingDiverged
from .evaluate import evaluate
from .methods import method_class
from .prepare import Prepared, arch_kwargs, build_model, prepare
from .report import model_figures, write_report


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
            distributed.join(prepared.device)
        threads = cpu_threads(config, self.device)
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        self.arch = arch_kwargs(config, self.data)
        model = build_model(config, self.data)
        # The layers every method acts on; kept by name because the modules get replaced.
        self.targets = [name for name, _ in decomposable_layers(
            model, scheme=config.scheme, pointwise=config.pointwise)]
        self.method = method_class(config.method)(config)
        ckpt = prepared.checkpoint
        if ckpt is not None:
            restore_lowrank(model, ckpt["model"])
            model.load_state_dict(ckpt["model"])
        else:
            self.method.setup_model(self, model)
        self.model = model.to(self.device)
        # One image for FLOP counts and budgets; one batch for latencies.
        self.example = self.data.batch_inputs(self.data.test_x[:1], self.device)
        self.latency_input = self.data.batch_inputs(self.data.test_x[:config.batch_size],
                                                    self.device)
        self.decomposition = None   # the final decomposition's report, set by the method
        self.wrapped = distributed.wrap(self.model, self.world_size, self.device)
        self.epoch = 0 if ckpt is None else ckpt["epoch"]
        self.history: list[dict] = []
        self.dense_test_accuracy = None
        self.train_time = 0.0
        self.method.attach(self)
        self.optimizer, self.scheduler = make_optimizer(self.model, config,
                                                        self.method.schedule_epochs())
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.method.load_state_dict(ckpt["trp"])
            set_rng_states(ckpt["rng"])
            self.history = ckpt["history"]
            self.dense_test_accuracy = ckpt.get("dense_test_accuracy")
            self.train_time = ckpt.get("train_time_s", 0.0)
        if self.writer:
            os.makedirs(prepared.out_dir, exist_ok=True)

    @property
    def writer(self) -> bool:
        return self.rank == 0

    # -- epochs --------------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        config, epoch, method = self.config, self.epoch, self.method
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
        hooks_cpu = 0.0   # CPU time in the method's step hooks
        lr = self.optimizer.param_groups[0]["lr"]
        for step, (x, y) in enumerate(bar):
            hook_start = time.process_time()
            method.before_forward()
            hooks_cpu += time.process_time() - hook_start
            out = self.wrapped(x)
            loss = F.cross_entropy(out, y)
            extra = method.extra_loss(self.model)
            objective = loss if extra is None else loss + extra
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            hook_start = time.process_time()
            method.after_backward()
            hooks_cpu += time.process_time() - hook_start
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
        if method.hooks_cpu_key is not None:
            row[method.hooks_cpu_key] = hooks_cpu
        return row

    def log_epoch(self, row: dict) -> None:
        line = (f"epoch {row['epoch']}/{self.config.total_epochs}  loss {row['train_loss']:.4f}  "
                f"train {100 * row['train_accuracy']:.2f}%  test {100 * row['test_accuracy']:.2f}%")
        if "decomposed_test_accuracy" in row:
            line += (f"  energy {row['energy']:.3f}  decomposed {100 * row['decomposed_test_accuracy']:.2f}% at "
                     f"{row['decomposed_speedup']:.2f}x (mean rank {row['mean_rank']:.1f})")
        line += f"  lr {row['lr']:.3g}  {row['time_s']:.1f}s"
        self.log(line)

    def fit(self) -> None:
        config = self.config
        while self.epoch < config.total_epochs:
            start = time.perf_counter()
            if self.method.epoch_start(self):
                # The method replaced layers: DDP and the optimizer follow the new parameters.
                self.wrapped = distributed.wrap(self.model, self.world_size, self.device)
                self.optimizer, self.scheduler = make_optimizer(self.model, config,
                                                                self.method.schedule_epochs())
            steps_start, steps_cpu = time.perf_counter(), time.process_time()
            row = self.train_epoch()
            # The steps alone, without evaluation; CPU time too, which other processes on
            # shared cores disturb far less than wall time.
            row["train_s"] = time.perf_counter() - steps_start
            row["train_cpu_s"] = time.process_time() - steps_cpu
            self.method.epoch_trained(self)
            if self.writer:
                row["test_accuracy"] = evaluate(self.model, self.data, self.device)
                row.update(self.method.epoch_metrics(self))
            self.method.epoch_end(self)
            self.epoch += 1
            row["time_s"] = time.perf_counter() - start
            self.train_time += row["time_s"]
            if self.writer:
                self.history.append(row)
                save_checkpoint(self)
                self.log_epoch(row)

    # -- the end -------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Final model (the method's, e.g. TRP decomposed with no fine-tuning), model.pt and
        the report files."""
        started = time.perf_counter()
        config = self.config
        model = self.model.eval()
        self.method.finish(self)
        accuracy = evaluate(model, self.data, self.device)
        dense = build_model(config, self.data).to(self.device)
        report = {
            "method": config.method,
            "scheme": config.scheme,
            "test_accuracy": accuracy,
            "dense_test_accuracy": self.dense_test_accuracy,
            **model_figures(model, dense, set(self.targets), config.scheme, self.example,
                            self.latency_input, decomposition=self.decomposition,
                            onnxruntime=config.measure == "onnxruntime",
                            pointwise=config.pointwise),
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
    with _running(prepared, progress, log) as run_:
        run_.fit()
        return run_.finish() if run_.writer else None


def fit(prepared: Prepared, progress: bool | None = None, log=tqdm.write) -> nn.Module:
    """Trains (or resumes) the prepared run to its last epoch, a checkpoint after each, and
    returns the model, without the method's end and the report files: for a caller that
    reports itself (the compress command's fine-tuning)."""
    with _running(prepared, progress, log) as run_:
        run_.fit()
        return run_.model.eval()


@contextmanager
def _running(prepared: Prepared, progress: bool | None, log):
    """A Run of ``prepared``; torch's thread count (a setting of the process) is restored and
    the process group left on the way out."""
    threads = torch.get_num_threads()
    run_ = None
    try:
        run_ = Run(prepared, progress, log)
        if run_.writer:
            done = f", resuming after epoch {run_.epoch}" if prepared.checkpoint else ""
            log(f"{prepared.config.method} / {prepared.config.scheme}: {prepared.config.model} on "
                f"{prepared.config.dataset}, {prepared.config.total_epochs} epochs on "
                f"{run_.device}{done}; writing to {prepared.out_dir}")
        yield run_
    finally:
        torch.set_num_threads(threads)
        if run_ is not None:
            distributed.leave(run_.joined_group)


def train(config: TrainConfig, out_dir: str, resume: bool = False, progress: bool | None = None,
          log=tqdm.write) -> dict | None:
    """``prepare`` then ``run``: the whole job from Python."""
    return run(prepare(config, out_dir, resume), progress, log)
