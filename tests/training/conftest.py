"""Every test under tests/training runs with one torch CPU thread (the autouse fixture of
tests/single_thread.py, its one home)."""

from single_thread import one_cpu_thread  # noqa: F401  (registers the autouse fixture here)
