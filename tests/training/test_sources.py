"""A user's own data as the trainer's and the compress command's ImageData: a folder of one
sub-folder per class read with Pillow, and package.module:callable returning a Dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from small_datasets import digit_like
from trp_kernels.training import DataError, load_dataset
from trp_kernels.training.sources import HELD_OUT, is_reference, load_source


def write_folder(root, sizes=((6, 5),) * 10, classes=("cat", "dog"), mode="L", seed=0):
    """One sub-folder per class, ``len(sizes)`` images each (PNG), pixel values random;
    returns {class: [arrays]} as written."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        written[c] = []
        for i, (w, h) in enumerate(sizes):
            shape = (h, w) if mode == "L" else (h, w, 3)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / c / f"{i:03d}.png")
            written[c].append(pixels)
    return written


def test_a_folder_of_images_split_and_normalised(tmp_path):
    written = write_folder(tmp_path / "pets")
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image: skipped")
    data = load_source(str(tmp_path / "pets"))
    assert data.num_classes == 2 and data.in_channels == 1
    assert data.train_x.dtype == torch.uint8 and tuple(data.train_x.shape[1:]) == (1, 5, 6)
    assert len(data.test_y) == 4 and len(data.train_y) == 16          # 20% of 20 held out
    assert sorted(data.test_y.tolist()) == [0, 0, 1, 1]                # stratified
    every = {a.tobytes() for arrays in written.values() for a in arrays}
    seen = {x[0].numpy().tobytes() for x in torch.cat([data.train_x, data.test_x])}
    assert seen == every
    # normalised by the training split's mean and standard deviation (float64 reference)
    fit = data.train_x.double() / 255
    assert data.mean[0] == pytest.approx(float(fit.mean()))
    assert data.std[0] == pytest.approx(float(fit.std(unbiased=False)))
    inputs = data.batch_inputs(data.train_x, "cpu").double()
    assert float(inputs.mean()) == pytest.approx(0, abs=1e-6)
    # the same images held out on every load
    assert torch.equal(load_source(str(tmp_path / "pets")).test_x, data.test_x)


def test_a_folder_read_at_the_models_input_shape(tmp_path):
    write_folder(tmp_path / "pets", sizes=[(6, 5), (9, 4)] * 5, mode="RGB")
    data = load_dataset(str(tmp_path / "pets"), image_shape=(1, 8, 8))
    assert tuple(data.train_x.shape[1:]) == (1, 8, 8)
    rgb = load_dataset(str(tmp_path / "pets"), image_shape=(3, 4, 4))
    assert tuple(rgb.test_x.shape[1:]) == (3, 4, 4) and len(rgb.mean) == 3


@pytest.mark.parametrize("case, message", [
    ("one class", "holds 1 sub-folders and 10 images; it needs one sub-folder of images per "
                  "class, two classes at least"),
    ("sizes differ", "is 9x4, the first image 6x5; images of one size, or an input shape"),
    ("not an image", "is not an image Pillow can read"),
    ("a file", "is a file; give a folder of one sub-folder of images per class"),
    ("missing", "is not a folder, nor package.module:callable"),
])
def test_a_folder_that_cannot_be_used(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "one class":
        write_folder(root, classes=("cat",))
    elif case == "sizes differ":
        write_folder(root, sizes=[(6, 5), (9, 4)] * 5)
    elif case == "not an image":
        write_folder(root)
        (root / "dog" / "broken.png").write_bytes(b"no png")
    elif case == "a file":
        root.write_text("x")
    with pytest.raises(DataError, match="^dataset ") as info:
        load_source(str(root))
    assert message in str(info.value) and info.value.options == ("dataset",)


def test_a_dataset_callable_split_by_class():
    data = load_source("small_datasets:digit_like")
    reference = digit_like()
    assert data.num_classes == 3 and len(data.test_y) == int(HELD_OUT * 60)
    assert sorted(data.test_y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # inputs as the Dataset gives them: no normalisation of ours
    x = data.batch_inputs(data.test_x, "cpu")
    rows = {reference[i][0].numpy().tobytes(): int(reference[i][1]) for i in range(60)}
    for xi, yi in zip(x, data.test_y):
        assert rows[xi.numpy().tobytes()] == int(yi)


def test_a_dataset_callable_may_give_its_held_out_part():
    data = load_source("small_datasets:fit_and_held_out")
    assert (len(data.train_y), len(data.test_y)) == (40, 15)


@pytest.mark.parametrize("reference, message", [
    ("small_datasets:no_such", "cannot be imported"),
    ("small_datasets:broken", "raised OSError: the data server is down"),
    ("small_datasets:not_a_dataset", "returned a int, not a Dataset (or a pair of them"),
    ("small_datasets:not_tensors", "item 0's input is list, not a tensor [C, H, W]"),
])
def test_a_dataset_callable_that_cannot_be_used(reference, message):
    with pytest.raises(DataError, match="^data ") as info:
        load_source(reference, option="data")
    assert message in str(info.value)


def test_references_and_paths_are_told_apart(tmp_path):
    assert is_reference("pkg.module:make")
    assert not is_reference(str(tmp_path / "a:b")) and not is_reference("digits")
