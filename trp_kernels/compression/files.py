"""Crash-safe files: atomic writes (temp file + rename), checked reads, for model files and
the trainer's checkpoints alike, and the checks of where a command will write, made before it
starts any work (docs/design.md, "Errors")."""

from __future__ import annotations

import errno
import os
import tempfile
import warnings

import torch

# How a file of torch.save begins: a zip archive (torch >= 1.6), or a pickle (older torch).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"


class CheckpointError(ValueError):
    """A checkpoint or model file is missing, unreadable or not what it should be."""


class OutputPathError(ValueError):
    """A path to write to cannot be written: a file where a directory is needed, a directory
    that does not let us create files, an invalid name."""


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
    raises CheckpointError naming the file and, in a complete sentence, the problem."""
    if not os.path.exists(path):
        raise CheckpointError(f"{kind} {path} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"{kind} {path} is a directory, not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{kind} {path} cannot be read ({exc.strerror})") from None
    if not head:
        raise CheckpointError(f"{kind} {path} is empty (0 bytes): it was never completely "
                              f"written; write it again")
    try:
        with warnings.catch_warnings():   # torch's remarks on pickle protocols: not the user's
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise _unloadable(path, kind, head, exc) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{kind} {path} does not hold a dict (got {type(obj).__name__})")
    missing = [k for k in required_keys if k not in obj]
    if missing and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{kind} {path} holds a state_dict (layer names to tensors), not "
                              f"a {kind} written by trp_kernels")
    if missing:
        raise CheckpointError(f"{kind} {path} lacks the entries {missing}; it was not written "
                              f"by this version of trp_kernels")
    return obj


def _unloadable(path: str, kind: str, head: bytes, exc: Exception) -> CheckpointError:
    """What torch.load's failure on the file beginning with ``head`` means, as one sentence:
    torch's own messages run to paragraphs, and for a file that is no torch file at all they
    blame the weights_only default."""
    message = str(exc)
    if head.startswith((ZIP_MAGIC, PICKLE_MAGIC)) and "Weights only load failed" in message:
        return CheckpointError(f"{kind} {path} holds pickled Python objects other than tensors "
                               f"and plain values (such as a whole nn.Module saved with "
                               f"torch.save(model)), which trp_kernels does not unpickle: save "
                               f"the model's state_dict instead, or use trp_kernels.save_model")
    if head.startswith(ZIP_MAGIC) and (isinstance(exc, OSError) or "central directory" in message
                                       or "zip archive" in message):
        size = os.path.getsize(path)
        return CheckpointError(f"{kind} {path} is truncated or damaged: its zip archive is "
                               f"incomplete ({size:,} bytes), as when writing it was cut off; "
                               f"write it again")
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        return CheckpointError(f"{kind} {path} is not a file written by torch.save (it is "
                               f"neither a zip archive nor a pickle)")
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return CheckpointError(f"{kind} {path} cannot be loaded by torch.load "
                           f"({type(exc).__name__}: {first})")


def _name_max(directory: str) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _writable(directory: str) -> str | None:
    """None if a file can be created in ``directory`` (tried: permissions alone say nothing
    for root or a read-only file system), else the reason."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".trp-probe-", dir=directory)
    except OSError as exc:
        return exc.strerror or errno.errorcode.get(exc.errno, "error")
    os.close(fd)
    os.unlink(probe)
    return None


def _existing_ancestor(path: str) -> str:
    """The nearest of ``path`` and its parents that exists (as a file or a directory), spelled
    as in ``path`` (relative paths end at ".")."""
    path = os.path.normpath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path) or os.curdir
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(path: str) -> str:
    """Raises OutputPathError unless ``path`` is, or can be created as, a directory in which
    files can be written: for the commands to check their output directory before any work.
    Creates nothing (a probe file is created and removed). Returns ``path``."""
    if not isinstance(path, str) or not path.strip():
        raise OutputPathError(f"out must name a directory, got {path!r}")
    if "\0" in path:
        raise OutputPathError(f"out {path!r} is not a valid path (it holds a NUL character)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"out {path} exists and is not a directory")
    ancestor = _existing_ancestor(path)
    if not os.path.isdir(ancestor):
        raise OutputPathError(f"out {path}: {ancestor} is a file, not a directory")
    limit = _name_max(ancestor)
    long = [part for part in os.path.normpath(path).split(os.sep)
            if len(os.fsencode(part)) > limit]
    if long:
        raise OutputPathError(f"out {path}: the name {long[0][:20]}... is longer than the "
                              f"{limit} bytes the file system allows")
    reason = _writable(ancestor)
    if reason:
        raise OutputPathError(f"out {path}: cannot create files in {ancestor} ({reason})")
    return path


def check_output_file(path: str, option: str = "file") -> str:
    """Raises OutputPathError unless ``path`` is a new file that can be written in an existing
    directory (``option`` names it in the message). Creates nothing. Returns ``path``."""
    if os.path.isdir(path):
        raise OutputPathError(f"{option} {path} is a directory; name the file to write")
    if os.path.exists(path):
        raise OutputPathError(f"{option} {path} exists; not overwriting it")
    parent = os.path.dirname(os.path.normpath(path)) or os.curdir
    ancestor = _existing_ancestor(parent)
    if not os.path.isdir(ancestor):
        raise OutputPathError(f"{option} {path}: {ancestor} is a file, not a directory")
    if ancestor != parent:
        raise OutputPathError(f"{option} {path}: directory {parent} does not exist")
    if len(os.fsencode(os.path.basename(path))) > _name_max(parent):
        raise OutputPathError(f"{option} {path}: the file name is longer than the file "
                              f"system allows")
    reason = _writable(parent)
    if reason:
        raise OutputPathError(f"{option} {path}: cannot create files in {parent} ({reason})")
    return path
