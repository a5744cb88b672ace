"""Datasets that tests name by reference (``small_datasets:...``), as a user's
``package.module:callable`` returning a torch Dataset."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset


def digit_like(n: int = 60, classes: int = 3, shape=(1, 8, 8)) -> TensorDataset:
    """``n`` float inputs of ``shape``, ``classes`` classes in turn, the class written into the
    first pixel so that a model can learn it."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=generator)
    y = torch.arange(n) % classes
    x[:, 0, 0, 0] = 3.0 * y
    return TensorDataset(x, y)


def fit_and_held_out():
    """A pair: the Dataset to fit on, the one held out."""
    return digit_like(40), digit_like(15)


class NotTensors(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return [[0.0]], 0


def not_tensors():
    return NotTensors()


def not_a_dataset():
    return 42


def broken():
    raise OSError("the data server is down")
