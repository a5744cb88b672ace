import os
import pickle

import numpy as np
import pytest
import torch
from testing import devices

from trp_kernels.training.data import (DataError, crop_flip, load_cifar10, load_digits,
                              num_train_batches, train_batches)
from trp_kernels.training.sources import load_dataset


def write_fake_cifar(root, per_batch=6, seed=0):
    """A cifar-10-batches-py directory in the real format (python pickles of uint8 rows of
    3072 = 3 x 32 x 32 values, channel-major, and a list of labels), with few images."""
    rng = np.random.default_rng(seed)
    directory = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(directory)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {b"batch_label": name.encode(),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(directory, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    return directory


def test_digits_split_is_fixed_stratified_and_normalised():
    a, b = load_digits(), load_digits()
    assert len(a.train_y) == 1437 and len(a.test_y) == 360
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.shape[1:] == (1, 8, 8) and a.num_classes == 10
    counts = torch.bincount(a.test_y, minlength=10)
    assert int(counts.min()) >= 35                 # stratified: every digit ~36 times
    x = a.batch_inputs(a.train_x, "cpu")
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_reads_the_python_batches(tmp_path, nested):
    directory = write_fake_cifar(str(tmp_path))
    data = load_cifar10(str(tmp_path) if nested else directory)
    assert data.train_x.shape == (30, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (6, 3, 32, 32) and data.crop_padding == 4 and data.flip
    with open(os.path.join(directory, "data_batch_2"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert torch.equal(data.train_x[6].reshape(-1), torch.from_numpy(raw[b"data"][0]))
    assert data.train_y[6:12].tolist() == raw[b"labels"]


def test_cifar10_missing_files_are_named(tmp_path):
    directory = write_fake_cifar(str(tmp_path))
    os.remove(os.path.join(directory, "data_batch_3"))
    os.remove(os.path.join(directory, "test_batch"))
    with pytest.raises(DataError) as caught:
        load_cifar10(directory)
    message = str(caught.value)
    assert f"data_dir {directory} lacks data_batch_3, test_batch of" in message
    assert message.count("data_batch_3") == 1 and message.count("test_batch") == 1
    assert caught.value.options == ("data_dir",)
    with pytest.raises(DataError, match=f"data_dir {tmp_path / 'nowhere'} does not exist$"):
        load_cifar10(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="is not a directory"):
        load_cifar10(os.path.join(directory, "data_batch_1"))


def test_cifar10_corrupt_file_is_named(tmp_path):
    directory = write_fake_cifar(str(tmp_path))
    with open(os.path.join(directory, "data_batch_4"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_4 is not a CIFAR-10 python batch"):
        load_cifar10(directory)


def test_unknown_dataset():
    with pytest.raises(DataError, match="dataset mnist is not a folder, nor "
                                        "package.module:callable"):
        load_dataset("mnist")


@pytest.mark.parametrize("device", devices)
def test_crop_flip(device):
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32, device=device).reshape(2, 3, 4, 4)
    centre = torch.tensor([[2, 2], [2, 2]])
    assert torch.equal(crop_flip(x, 2, centre, None), x)
    shifted = crop_flip(x, 2, torch.tensor([[0, 2], [4, 3]]), None)
    # Image 0 moved down by 2 rows (zeros on top); image 1 up by 2 and left by 1.
    assert torch.equal(shifted[0, :, 2:], x[0, :, :2]) and not shifted[0, :, :2].any()
    assert torch.equal(shifted[1, :, :2, :3], x[1, :, 2:, 1:]) and not shifted[1, :, 2:].any()
    flipped = crop_flip(x, 0, None, torch.tensor([True, False]))
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])


def test_epoch_batches_are_reproducible_and_shared_between_processes(tmp_path):
    data = load_cifar10(write_fake_cifar(str(tmp_path), per_batch=10))
    one = list(train_batches(data, 16, epoch=3, seed=1, device="cpu"))
    again = list(train_batches(data, 16, epoch=3, seed=1, device="cpu"))
    other_epoch = list(train_batches(data, 16, epoch=4, seed=1, device="cpu"))
    assert len(one) == num_train_batches(data, 16) == 3          # 50 images: last 2 dropped
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, again))
    assert not torch.equal(one[0][0], other_epoch[0][0])
    # Augmented: the inputs are not the plain normalised images.
    plain = data.batch_inputs(data.train_x, "cpu")
    assert not any(torch.equal(one[0][0][0], img) for img in plain)
    # Two processes get disjoint halves that together are the one-process batch.
    halves = [list(train_batches(data, 16, 3, 1, "cpu", rank=r, world_size=2)) for r in (0, 1)]
    for whole, a, b in zip(one, *halves):
        assert torch.equal(torch.cat([a[0], b[0]]), whole[0])
        assert torch.equal(torch.cat([a[1], b[1]]), whole[1])
