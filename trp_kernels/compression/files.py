"""Crash-safe files: atomic writes (temp file + rename) and checked reads, for model files and
the trainer's checkpoints alike."""

from __future__ import annotations

import os
import tempfile

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
