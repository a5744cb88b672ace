"""The implementation switches ``TRP_CONV_IMPL`` and ``TRP_SVD_IMPL``: an environment variable
read on every call (so a test, a benchmark or a user can change it between calls), and a
context manager that forces a value for a block. One home for both switches."""

from __future__ import annotations

import os
from contextlib import contextmanager


def read(env: str, impls: tuple[str, ...]) -> str | None:
    """The implementation ``env`` forces now, or None (empty or ``auto``: the default choice);
    any other value raises ValueError naming the variable."""
    value = os.environ.get(env, "")
    if value in ("", "auto"):
        return None
    if value not in impls:
        raise ValueError(f"{env} must be one of {impls}, 'auto' or empty, got {value!r}")
    return value


@contextmanager
def forced(env: str, impls: tuple[str, ...], impl: str | None):
    """Runs the block with ``impl`` forced through ``env`` (None or ``"auto"``: the default
    choice), then restores the previous setting. Sets the process environment, so it is not
    thread-local."""
    if impl is not None and impl != "auto" and impl not in impls:
        raise ValueError(f"impl must be one of {impls}, 'auto' or None, got {impl!r}")
    previous = os.environ.get(env)
    os.environ[env] = impl or "auto"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[env]
        else:
            os.environ[env] = previous
