"""The data a run names, as the trainer's ImageData (data.py): ``load_dataset`` reads a named
source (data.py's digits and CIFAR-10) or a user's own labelled data: a folder of one sub-folder
per class, read with Pillow, or ``package.module:callable`` returning a torch Dataset (or a pair
of them: the data to fit and the data held out). The data is held in memory, the folder's
images as uint8.

A single set is split like digits: 20% held out (``HELD_OUT``), stratified by class, with a
fixed seed, so every run on the same data is evaluated on the same images. The held-out part
is the test split (evaluation), the rest the training split (calibration and fine-tuning).

A folder's images are converted to grey (one channel) or RGB (three) and resized to
``image_shape`` when it is given (the model's input shape); otherwise they keep the channels
of the first image (grey or RGB) and must all have its size. They are scaled to [0, 1] and
normalised by the training split's per-channel mean and standard deviation, as digits are. A
Dataset's items are used as they are: ``(input, label)`` with the input a tensor the model
takes (its transforms, normalisation included, are the Dataset's) and the label an int.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm.auto import tqdm

from ..compression.export import import_reference
from .data import DATASETS, DataError, ImageData, load_cifar10, load_digits

HELD_OUT = 0.2
SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0, image_shape=None,
                 progress: bool | None = None, option: str = "dataset") -> ImageData:
    """The data ``name`` names: one of DATASETS, a folder of one sub-folder per class or
    ``package.module:callable`` (below; ``image_shape`` (C, H, W): the size a folder's
    images are read at). DataError naming ``option`` when it cannot be read."""
    if name == "digits":
        return load_digits(seed)
    if name == "cifar10":
        return load_cifar10(data_dir)
    if not isinstance(name, str) or not name:
        raise DataError(f"{option} must be {', '.join(DATASETS)}, a folder or "
                        f"package.module:callable, got {name!r}", [option])
    return load_source(name, image_shape, progress, option)


def is_reference(source: str) -> bool:
    """Whether ``source`` names a callable ("package.module:callable") rather than a path."""
    module, _, name = source.partition(":")
    return bool(module and name) and not os.path.exists(source) and "/" not in module \
        and os.sep not in module


def load_source(source: str, image_shape=None, progress: bool | None = None,
                option: str = "dataset") -> ImageData:
    """The data ``source`` names (a folder or a callable; module docstring), split. DataError
    naming ``option`` when it cannot be read."""
    if is_reference(source):
        return load_callable(source, progress, option)
    if not os.path.exists(source):
        raise DataError(f"{option} {source} is not a folder, nor package.module:callable",
                        [option])
    if not os.path.isdir(source):
        raise DataError(f"{option} {source} is a file; give a folder of one sub-folder of "
                        f"images per class", [option])
    return load_folder(source, image_shape, progress, option)


def _split(labels: np.ndarray, source: str, option: str):
    """(fit indices, held-out indices), each in the split's shuffled order: HELD_OUT of each
    class held out."""
    from sklearn.model_selection import train_test_split

    try:
        fit, held = train_test_split(np.arange(len(labels)), test_size=HELD_OUT,
                                     random_state=SPLIT_SEED, stratify=labels)
    except ValueError as exc:
        raise DataError(f"{option} {source} cannot be split into a part to fit and a part "
                        f"held out with each class in both ({exc})", [option]) from None
    return fit, held


def load_folder(root: str, image_shape=None, progress: bool | None = None,
                option: str = "dataset") -> ImageData:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    files = [(os.path.join(root, c, f), label) for label, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(root, c)))
             if f.lower().endswith(IMAGE_SUFFIXES)]
    if len(classes) < 2 or not files:
        raise DataError(f"{option} {root} holds {len(classes)} sub-folders and {len(files)} "
                        f"images; it needs one sub-folder of images per class, two classes at "
                        f"least (image files: {', '.join(IMAGE_SUFFIXES)})", [option])
    mode = size = None
    if image_shape is not None:
        channels, height, width = image_shape
        if channels not in (1, 3):
            raise DataError(f"{option} {root}: images are read as grey or RGB, but the model "
                            f"takes {channels} channels", [option])
        mode, size = ("L" if channels == 1 else "RGB"), (width, height)
    images = []
    for path, _ in tqdm(files, desc=f"reading {root}", unit=" images", leave=False,
                        disable=None if progress is None else not progress):
        try:
            with Image.open(path) as image:
                if mode is None:
                    mode = "L" if image.mode in GREY_MODES else "RGB"
                    size = image.size
                image = image.convert(mode)
                if image.size != size:
                    if image_shape is None:
                        raise DataError(f"{option} {root}: {path} is {image.size[0]}x"
                                        f"{image.size[1]}, the first image "
                                        f"{size[0]}x{size[1]}; images of one size, or an input "
                                        f"shape to resize them to", [option])
                    image = image.resize(size, Image.BILINEAR)
                images.append(np.asarray(image, dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{option} {root}: {path} is not an image Pillow can read "
                            f"({type(exc).__name__})", [option]) from None
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)      # [N, C, H, W]
    labels = np.array([label for _, label in files])
    fit, held = _split(labels, root, option)
    scaled = x[fit].astype(np.float64) / 255.0
    return ImageData(
        name=root, train_x=torch.from_numpy(x[fit]), train_y=torch.from_numpy(labels[fit]),
        test_x=torch.from_numpy(x[held]), test_y=torch.from_numpy(labels[held]),
        num_classes=len(classes), scale=255.0,
        mean=tuple(float(m) for m in scaled.mean((0, 2, 3))),
        std=tuple(float(s) for s in scaled.std((0, 2, 3))))


def load_callable(reference: str, progress: bool | None = None,
                  option: str = "dataset") -> ImageData:
    try:
        target = import_reference(reference)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"{option} {reference} cannot be imported: {exc}", [option]) from None
    try:
        made = target()
    except Exception as exc:   # the user's callable: whatever it raises means the same
        raise DataError(f"{option} {reference} raised {type(exc).__name__}: {exc}",
                        [option]) from None
    parts = made if isinstance(made, (tuple, list)) and len(made) == 2 else (made,)
    for part in parts:
        if not (hasattr(part, "__getitem__") and hasattr(part, "__len__")):
            raise DataError(f"{option} {reference} returned a {type(part).__name__}, not a "
                            f"Dataset (or a pair of them: to fit, held out)", [option])
    loaded = [_materialise(part, reference, progress, option) for part in parts]
    if len(loaded) == 2:
        (train_x, train_y), (test_x, test_y) = loaded
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(f"{option} {reference}: the two Datasets' inputs differ in shape "
                            f"({list(train_x.shape[1:])} and {list(test_x.shape[1:])})",
                            [option])
    else:
        x, y = loaded[0]
        fit, held = _split(y.numpy(), reference, option)
        train_x, train_y, test_x, test_y = x[fit], y[fit], x[held], y[held]
    classes = getattr(parts[0], "classes", None)
    num_classes = len(classes) if classes is not None else \
        int(max(train_y.max(), test_y.max())) + 1
    channels = train_x.shape[1]
    return ImageData(name=reference, train_x=train_x, train_y=train_y, test_x=test_x,
                     test_y=test_y, num_classes=num_classes, scale=1.0, mean=(0.0,) * channels,
                     std=(1.0,) * channels)


def _materialise(dataset, reference: str, progress, option: str):
    """(inputs [N, ...] float32, labels [N] int64) of every item of ``dataset``."""
    if len(dataset) == 0:
        raise DataError(f"{option} {reference} returned an empty Dataset", [option])
    inputs, labels = [], []
    for i in tqdm(range(len(dataset)), desc=f"reading {reference}", unit=" items", leave=False,
                  disable=None if progress is None else not progress):
        item = dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"{option} {reference}: item {i} is a {type(item).__name__}, not "
                            f"a pair (input, label)", [option])
        x, y = item
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"{option} {reference}: item {i}'s input is {got}, not a tensor "
                            f"[C, H, W] (add the transforms that make one, e.g. ToTensor)",
                            [option])
        if inputs and x.shape != inputs[0].shape:
            raise DataError(f"{option} {reference}: item {i}'s input is {list(x.shape)}, item "
                            f"0's {list(inputs[0].shape)}; inputs of one shape", [option])
        try:
            label = int(y)
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{option} {reference}: item {i}'s label is {y!r}, not an int",
                            [option]) from None
        if label < 0:
            raise DataError(f"{option} {reference}: item {i}'s label is {label}; labels are "
                            f"class indices from 0", [option])
        inputs.append(x.detach().float())
        labels.append(label)
    return torch.stack(inputs), torch.tensor(labels, dtype=torch.int64)
