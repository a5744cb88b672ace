"""The files of a run's directory, and the checkpoint written after every epoch: everything a
resumed run needs to continue exactly (model, optimizer, scheduler, the method's state, the
random number generators' states, history)."""

from __future__ import annotations

import os
import random
from dataclasses import asdict

import numpy as np
import torch

from .._version import __version__
from ..compression.export import lowrank_layers
from ..compression.files import CheckpointError, atomic_save, load_file

CHECKPOINT_FORMAT = "trp_kernels.checkpoint/1"
CHECKPOINT, MODEL_FILE, REPORT = "checkpoint.pt", "model.pt", "report.json"
REQUIRED = ("format", "config", "epoch", "model", "lowrank_layers", "optimizer", "scheduler",
            "rng", "history")


def read_checkpoint(out_dir: str) -> dict:
    ckpt = load_file(os.path.join(out_dir, CHECKPOINT), "checkpoint", REQUIRED)
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {os.path.join(out_dir, CHECKPOINT)} has format "
                              f"{ckpt['format']!r}, this version reads {CHECKPOINT_FORMAT!r}")
    return ckpt


def save_checkpoint(run) -> None:
    """The state of ``run`` (a loop.Run) between epochs, written atomically."""
    atomic_save({
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "config": asdict(run.config),
        "epoch": run.epoch,
        "lowrank_layers": lowrank_layers(run.model),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "trp": run.method.state_dict(),   # the method's state (TRP's step); None for others
        "rng": rng_states(),
        "history": run.history,
        "dense_test_accuracy": run.dense_test_accuracy,
        "train_time_s": run.train_time,
    }, os.path.join(run.prepared.out_dir, CHECKPOINT))


def rng_states() -> dict:
    """Every generator a training step may draw from: torch (CPU and each CUDA device),
    Python's random and NumPy's global generator."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
