"""The files of a run's directory, and the checkpoint written after every epoch: everything a
resumed run needs to continue exactly (model, optimizer, scheduler, the method's state, random
states, history)."""

from __future__ import annotations

import os
from dataclasses import asdict

from .. import __version__
from ..checkpoint import CheckpointError, atomic_save, load_file, rng_states
from ..export import lowrank_layers

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
