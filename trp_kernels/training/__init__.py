"""The training run behind ``python -m trp_kernels train``: one configuration, four methods,
a checkpoint every epoch that a resumed run continues from exactly, and a report at the end.

Methods (docs/design.md has the method, docs/training.md the command):
  baseline  the dense model, trained.
  trp       TRP: projection every ``period`` steps and, with nuclear_weight > 0, the nuclear
            sub-gradient; at the end the trained weights are decomposed by the final rule
            (final_threshold and/or final_energy) with no fine-tuning.
  decomp    the papers' comparison: train a baseline (or load one with ``init``), decompose it
            by energy and/or rank, fine-tune for ``finetune_epochs``.
  finetune  fine-tune the model.pt ``init`` names (compressed or not) for ``epochs``: what the
            compress command runs after a compression.
  lowrank   ELRT: low-rank from step 0 (rank as an int or a fraction of full rank), with an
            orthogonality penalty of weight ``orth_weight``.

Files in the output directory: checkpoint.pt (after every epoch, atomically), model.pt (the
final model, ``trp_kernels.load_model`` reads it), report.json, report.md and report.png.

Under torchrun (WORLD_SIZE > 1) every process trains its share of each batch in
DistributedDataParallel and rank 0 alone writes files.

The package by concern: config.py (TrainConfig and its validation), methods.py (each method as
one object of hooks), loop.py (Run: the epochs and the end), prepare.py (checks before anything
is written), data.py (the datasets), checkpoints.py (the run's files and random states),
report.py (the report files), distributed.py (torchrun), evaluate.py, sources.py (a user's
own data: a folder of images or a Dataset callable).
"""

from .checkpoints import CHECKPOINT, CHECKPOINT_FORMAT, MODEL_FILE, REPORT, read_checkpoint
from .config import DIGITS_STAGE_STRIDES, LR_SCHEDULES, SCHEMES, TRAIN_MODELS, TrainConfig
from .data import DATASETS, DataError, ImageData
from .sources import load_dataset
from .errors import ConfigError, TrainingDiverged
from .evaluate import evaluate
from .loop import Run, cpu_threads, fit, make_optimizer, run, train
from .methods import METHODS, Method, method_class
from .prepare import RESUME_MAY_CHANGE, Prepared, arch_kwargs, prepare, prepare_resume

__all__ = [
    "TrainConfig", "ConfigError", "TrainingDiverged", "Prepared", "Run", "Method",
    "prepare", "prepare_resume", "run", "fit", "train", "evaluate", "make_optimizer", "cpu_threads",
    "arch_kwargs", "read_checkpoint", "method_class", "load_dataset", "ImageData", "DataError",
    "METHODS", "DATASETS", "TRAIN_MODELS", "LR_SCHEDULES", "SCHEMES", "DIGITS_STAGE_STRIDES",
    "CHECKPOINT", "CHECKPOINT_FORMAT", "MODEL_FILE", "REPORT", "RESUME_MAY_CHANGE",
]
