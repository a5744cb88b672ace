"""The CPU ops built with ThreadSanitizer and run on their thread-heavy calls.

The CPU sources (setup.py's CPU translation unit, the same list the package builds) are compiled
with ``-fsanitize=thread`` into build/tsan/, and tsan_workload.py calls them in a Python process
with libtsan preloaded (an uninstrumented Python cannot load an instrumented library otherwise).
Only our code is instrumented: a race inside torch, MKL or OpenMP is out of its sight (tsan.supp
silences the reports their uninstrumented threads cause, and says why), and MKL's wrong results
inside an OpenMP region were no race at all (tests/ops/test_svd_threads.py checks results at
scale). The deliberate race of race_control.cpp, built and run the same way, must be
reported, so a clean report means something.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest
import torch
from torch.utils import cpp_extension

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUILD = ROOT / "build" / "tsan"
FLAGS = ["-O1", "-g", "-fsanitize=thread", "-fno-omit-frame-pointer", "-fPIC", "-std=c++20",
         f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
# halt_on_error=0: every report of a run is printed; exitcode: a run with a report fails;
# tsan.supp: the reports about torch's own uninstrumented threads, each with its reason.
TSAN_OPTIONS = f"halt_on_error=0 exitcode=66 suppressions={HERE / 'tsan.supp'}"
REPORT = "WARNING: ThreadSanitizer"


def _libtsan() -> str | None:
    try:
        path = subprocess.run(["g++", "-print-file-name=libtsan.so"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return os.path.realpath(path) if os.path.isabs(path) and os.path.exists(path) else None


LIBTSAN = _libtsan()
pytestmark = pytest.mark.skipif(LIBTSAN is None, reason="g++ has no ThreadSanitizer runtime")


def _cpu_sources() -> tuple[list[str], list[str]]:
    """The CPU unit's sources and include directories, as setup.py declares them."""
    spec = importlib.util.spec_from_file_location("trp_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    saved = os.environ.get("TRP_NO_CUDA")
    os.environ["TRP_NO_CUDA"] = "1"
    try:
        spec.loader.exec_module(setup)
        ext = setup.extension()
    finally:
        if saved is None:
            os.environ.pop("TRP_NO_CUDA")
        else:
            os.environ["TRP_NO_CUDA"] = saved
    members = setup.translation_units(ext.sources)["trp_cpu"]
    return [str(ROOT / m) for m in members], ext.include_dirs


def _compile(name: str, sources: list[str], include_dirs: list[str]) -> pathlib.Path:
    """A shared library of ``sources`` under build/tsan/, rebuilt when a file of csrc/ or a
    source is newer."""
    BUILD.mkdir(parents=True, exist_ok=True)
    out = BUILD / f"{name}.so"
    inputs = [pathlib.Path(s) for s in sources] + list((ROOT / "csrc").rglob("*"))
    if out.exists() and all(p.stat().st_mtime <= out.stat().st_mtime for p in inputs):
        return out
    unit = BUILD / f"{name}.cpp"
    unit.write_text("".join(f'#include "{s}"\n' for s in sources))
    libs = [f"-L{d}" for d in cpp_extension.library_paths()] + ["-lc10", "-ltorch_cpu", "-ltorch_python"]
    includes = [*include_dirs, sysconfig.get_paths()["include"]]  # ops.cpp: the module init
    command = ["g++", *FLAGS, "-shared", str(unit), "-o", str(out),
               *[f"-I{d}" for d in includes], *libs]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


@functools.cache
def instrumented_ops() -> pathlib.Path:
    sources, include_dirs = _cpu_sources()
    return _compile("trp_cpu_tsan", sources, include_dirs)


def run_instrumented(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LD_PRELOAD=LIBTSAN, TSAN_OPTIONS=TSAN_OPTIONS)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=900)


def test_a_deliberate_race_is_reported():
    control = _compile("race_control", [str(HERE / "race_control.cpp")],
                       cpp_extension.include_paths())
    code = (f"import torch; torch.ops.load_library({str(control)!r}); "
            "print(torch.ops.trp_race_control.racy_count(100000))")
    result = run_instrumented("-c", code)
    assert REPORT in result.stderr and "data race" in result.stderr, result.stderr[-3000:]
    assert result.returncode == 66, result.returncode


def test_cpu_ops_have_no_data_race():
    result = run_instrumented(str(HERE / "tsan_workload.py"), str(instrumented_ops()))
    assert REPORT not in result.stderr, result.stderr[-20000:]
    assert result.returncode == 0, result.stderr[-5000:]
    assert "workload done" in result.stdout
