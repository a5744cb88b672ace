"""Crash-safe files: atomic writes (temp file + rename), checked reads, and the random number
generator states a resumed run needs to continue exactly where it stopped."""

from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint or model file is missing, unreadable or not what it should be."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write, binary: bool = True) -> None:
    """Calls ``write(file)`` on a temporary file in ``path``'s directory, then renames it over
    ``path``: a crash or a kill leaves either the old file or the new one, never a truncated
    one. The file gets the usual permissions (0666 less the umask)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj, path: str) -> None:
    """torch.save, atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def load_file(path: str, kind: str, required_keys=(), device="cpu") -> dict:
    """Loads a dict saved by ``atomic_save`` (tensors and plain Python only: weights_only), or
    raises CheckpointError naming the file and the problem."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{kind} {path} does not exist")
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{kind} {path} is corrupt or unreadable "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{kind} {path} does not hold a dict (got {type(obj).__name__})")
    missing = [k for k in required_keys if k not in obj]
    if missing:
        raise CheckpointError(f"{kind} {path} lacks the entries {missing}; it was not written "
                              f"by this version of trp_kernels")
    return obj


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
