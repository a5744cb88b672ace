"""Image classification data held in memory as tensors, and the per-epoch batches of training.

Two named sources: scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images, no
download; split train/test with a fixed seed) and CIFAR-10 read from a directory in the
standard ``cifar-10-batches-py`` format (training with random crops of padding 4 and horizontal
flips). A user's own data, and ``load_dataset`` that reads any of them by name, are in
sources.py.

Batches are drawn from a generator seeded by (seed, epoch), so an epoch's order and augmentation
do not depend on what ran before it: a run resumed from a checkpoint sees exactly the batches an
uninterrupted run would have seen. Augmentation runs batched on the training device.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from .errors import OptionError

DATASETS = ("digits", "cifar10")
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class DataError(OptionError):
    """The data asked for is missing or unreadable."""


@dataclass
class ImageData:
    """Raw images [N, C, H, W] (uint8 or float) and int64 labels; ``batch_inputs`` turns raw
    images into normalised float32 inputs as ``(x / scale - mean) / std`` per channel."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0     # random crop with this zero padding (0: none)
    flip: bool = False        # random horizontal flips
    # (mean, std) as [1, C, 1, 1] tensors per device: made once, not copied to the device for
    # every batch (a host-to-GPU copy of a pageable tensor waits for the stream).
    _normalisers: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    def batch_inputs(self, x: torch.Tensor, device) -> torch.Tensor:
        x = x.to(device, non_blocking=True).float()
        if x.device not in self._normalisers:
            self._normalisers[x.device] = tuple(
                torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        mean, std = self._normalisers[x.device]
        return (x / self.scale - mean) / std


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's digits, split (stratified) with ``seed``; normalised by the training
    split's mean and standard deviation."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images.astype(np.float32)[:, None]          # [N, 1, 8, 8], values 0..16
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target)
    scaled = train_x / 16.0
    return ImageData(
        name="digits",
        train_x=torch.from_numpy(train_x), train_y=torch.from_numpy(train_y).long(),
        test_x=torch.from_numpy(test_x), test_y=torch.from_numpy(test_y).long(),
        num_classes=10, scale=16.0, mean=(float(scaled.mean()),), std=(float(scaled.std()),),
    )


def _read_cifar_batch(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except Exception as exc:  # any unpickling or layout problem means the same to the user
        raise DataError(f"{path} is not a CIFAR-10 python batch file ({type(exc).__name__}: "
                        f"{exc})") from exc
    if len(labels) != len(images):
        raise DataError(f"{path} holds {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def load_cifar10(data_dir: str) -> ImageData:
    """CIFAR-10 from ``data_dir``: the ``cifar-10-batches-py`` directory itself or a directory
    containing it, holding data_batch_1..5 and test_batch (python pickles)."""
    if data_dir is None:
        raise DataError("data_dir is required for cifar10: the cifar-10-batches-py directory",
                        ["data_dir"])
    if not os.path.isdir(data_dir):
        raise DataError(f"data_dir {data_dir} does not exist" if not os.path.exists(data_dir)
                        else f"data_dir {data_dir} is not a directory", ["data_dir"])
    nested = os.path.join(data_dir, "cifar-10-batches-py")
    root = nested if os.path.isdir(nested) else data_dir
    expected = CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)
    missing = [name for name in expected if not os.path.isfile(os.path.join(root, name))]
    if missing:
        raise DataError(
            f"data_dir {data_dir} lacks {', '.join(missing)} of the CIFAR-10 python version "
            f"(the cifar-10-batches-py directory, or the one holding it)", ["data_dir"])
    parts = [_read_cifar_batch(os.path.join(root, name)) for name in CIFAR10_TRAIN_FILES]
    test_x, test_y = _read_cifar_batch(os.path.join(root, CIFAR10_TEST_FILE))
    return ImageData(
        name="cifar10",
        train_x=torch.cat([p[0] for p in parts]), train_y=torch.cat([p[1] for p in parts]),
        test_x=test_x, test_y=test_y, num_classes=10, scale=255.0,
        mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_padding=4, flip=True,
    )


def crop_flip(x: torch.Tensor, padding: int, shift: torch.Tensor | None,
              flipped: torch.Tensor | None) -> torch.Tensor:
    """Crops each image of x [B, C, H, W], zero-padded by ``padding``, at offsets ``shift``
    [B, 2] (row, column; each in [0, 2 * padding]), then mirrors the images where ``flipped``
    [B] is true. Either step is skipped when its tensor is None."""
    B, C, H, W = x.shape
    if shift is not None:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        shift = shift.to(x.device)
        rows = (shift[:, 0, None] + torch.arange(H, device=x.device))[:, None, :, None]
        cols = (shift[:, 1, None] + torch.arange(W, device=x.device))[:, None, None, :]
        batch = torch.arange(B, device=x.device)[:, None, None, None]
        channel = torch.arange(C, device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    if flipped is not None:
        x = torch.where(flipped.to(x.device)[:, None, None, None], x.flip(-1), x)
    return x


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Distinct, fixed streams per (seed, epoch): no state carries from one epoch to the next.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_batches(data: ImageData, batch_size: int, epoch: int, seed: int, device,
                  rank: int = 0, world_size: int = 1
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The shuffled, augmented training batches of one epoch. With ``world_size`` > 1 each
    process gets its share (batch_size / world_size images) of every global batch; every
    process draws the same permutation and augmentation, so the shares never overlap and the
    union is what one process would train on. The last incomplete batch is dropped, so
    BatchNorm never sees a batch of one image."""
    generator = epoch_generator(seed, epoch)
    n = len(data.train_y)
    order = torch.randperm(n, generator=generator)
    shift = (torch.randint(0, 2 * data.crop_padding + 1, (n, 2), generator=generator)
             if data.crop_padding else None)
    flipped = torch.rand(n, generator=generator) < 0.5 if data.flip else None
    # One copy of the epoch's augmentation to the device, sliced per batch there.
    shift = None if shift is None else shift.to(device)
    flipped = None if flipped is None else flipped.to(device)
    per_rank = batch_size // world_size
    for start in range(0, n - batch_size + 1, batch_size):
        positions = slice(start + rank * per_rank, start + (rank + 1) * per_rank)
        index = order[positions]
        x = data.batch_inputs(data.train_x[index], device)
        x = crop_flip(x, data.crop_padding, None if shift is None else shift[positions],
                      None if flipped is None else flipped[positions])
        yield x, data.train_y[index].to(device, non_blocking=True)


def num_train_batches(data: ImageData, batch_size: int) -> int:
    return len(data.train_y) // batch_size


def split_batches(data: ImageData, batch_size: int, device, split: str = "test"
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The images of the ``split`` ("test" or "train") in order, normalised, unaugmented."""
    x, y = (data.test_x, data.test_y) if split == "test" else (data.train_x, data.train_y)
    for start in range(0, len(y), batch_size):
        yield (data.batch_inputs(x[start:start + batch_size], device),
               y[start:start + batch_size].to(device, non_blocking=True))


def test_batches(data: ImageData, batch_size: int, device
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return split_batches(data, batch_size, device, "test")
