"""How strong the emulated CUDA tests are: deletes each barrier of the CUDA kernels in turn
(every __syncthreads, __syncthreads_or/_and/_count, __syncwarp and grid.sync() in csrc/), and
makes a few shared-memory layouts one element short, runs the emulated tests against each such
mutant and lists the mutants no test caught. A predicate barrier is deleted by keeping its
argument: each thread then sees its own predicate instead of the block's.

The mutants are built and tested in a copy of the working tree (under build/barrier-mutants/),
so the tree itself is never modified. Usage:

    python tools/barrier_mutants.py [--filter TEXT]... [--tree DIR] [--markdown] [-- PYTEST ARGS]

Without PYTEST ARGS each mutant runs the emulated tests (`-m emulated_cuda`) of the kernels its
file belongs to (tests_for), stopping at the first failure. --markdown prints the table of
docs/cuda_svd.md, "Mutation test". A caught mutant takes about a minute on 2 cores, one that
survives four or five.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ["csrc/cuda/*.cu", "csrc/include/trp/**/*.cuh"]
# The kernel headers the emulation replaces: its include directory comes first on its include
# path (tests/emulated_cuda.py, INCLUDES), so a twin there hides the header of csrc/include, and
# a mutant of that one could not fail any emulated test.
_EMULATION_INCLUDE = ROOT / "tests" / "emulation" / "include"
NOT_EMULATED = {f"csrc/include/{p.relative_to(_EMULATION_INCLUDE).as_posix()}"
                for p in _EMULATION_INCLUDE.glob("trp/**/*.cuh")}
# The emulated tests of the kernels, in the order that fails a mutant soonest: the block
# reductions' own checks (seconds), the blocked Jacobi's three launch paths on small matrices,
# the warm starts, the SVD contract and CUDA-only cases, the conv kernel's own harness and the conv launcher's
# cases, and the tour of every kernel (its 520x530 calls take half a minute each).
_OPTIONS = ["-m", "emulated_cuda", "-x", "-v", "-p", "no:cacheprovider"]
_REDUCTIONS = ["tests/emulation/test_block_reductions.py"]
_SVD = ["tests/ops/test_kernel_tour.py::test_blocked_jacobi_launch_paths",
        "tests/ops/test_svd_warm.py", "tests/ops/test_svd_contract.py", "tests/ops/test_svd_cuda.py"]
_CONV = ["tests/ops/test_fused_conv_emulation.py", "tests/ops/test_conv_cuda.py",
         "tests/ops/test_conv_contract.py", "tests/ops/test_conv_dense.py"]
_TOUR = ["tests/ops/test_kernel_tour.py::test_every_kernel_instantiation_runs"]
DEFAULT_TESTS = [*_REDUCTIONS, *_SVD, *_CONV, *_TOUR, *_OPTIONS]


def tests_for(path: str) -> list[str]:
    """The emulated tests that run the kernels of this source: a conv kernel's mutant is not
    run against the SVD tests, nor an SVD kernel's against the conv tests. The headers both
    use (cuda_utils.cuh, block_reduce.cuh) get all of them."""
    if "/conv/" in path or "lowrank_conv2d" in path:
        return [*_CONV, *_TOUR, *_OPTIONS]
    if "/svd/" in path or "svd" in pathlib.Path(path).name or "jacobi" in path:
        return [*_REDUCTIONS, *_SVD, *_TOUR, *_OPTIONS]
    return DEFAULT_TESTS


TIMEOUT_S = 1800

# Layouts made one element (or 16 bytes) short, so that two arrays overlap: (file, text, mutant).
LAYOUT_MUTANTS = [
    ("csrc/include/trp/svd/fused_svd_layout.cuh",
     "stage = take(static_cast<int64_t>(kChunk) * stage_ld, 8);",
     "stage = take(static_cast<int64_t>(kChunk) * stage_ld - 1, 8);"),
    ("csrc/include/trp/svd/jacobi_eigen.cuh", "sine = cosine + 2 * pairs;",
     "sine = cosine + 2 * pairs - 1;"),
    ("csrc/cuda/block_jacobi.cu", "s.vt = s.g + TileT::kElems;", "s.vt = s.g + TileT::kElems - 1;"),
    ("csrc/cuda/block_jacobi.cu", "double* right = left + TileT::kElems;",
     "double* right = left + TileT::kElems - 1;"),
    ("csrc/include/trp/conv/lowrank_conv2d_fused.h",
     "p.stage_offset = p.mid_offset + mid_rows * p.mid_stride;",
     "p.stage_offset = p.mid_offset + mid_rows * p.mid_stride - 16;"),
]

BARRIER = re.compile(r"__syncthreads(_or|_and|_count)?\s*\(|__syncwarp\s*\("
                     r"|\b(?:(?:cooperative_groups|cg)::)?(?:grid|this_grid\(\))\.sync\s*\(")


@dataclasses.dataclass
class Mutant:
    path: str      # relative to the tree
    line: int
    what: str      # the construct mutated
    original: str  # the whole file before and after
    mutated: str

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line} {self.what}"


def _call_end(text: str, open_paren: int) -> int:
    """Index just past the parenthesis that closes the one at ``open_paren``."""
    depth = 0
    for i in range(open_paren, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError("unbalanced parentheses")


def _code_positions(text: str):
    """Positions of barrier calls outside comments."""
    for match in BARRIER.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        if "//" in text[line_start:match.start()]:
            continue
        yield match


def barrier_mutants(tree: pathlib.Path) -> list[Mutant]:
    mutants = []
    files = sorted({p for pattern in SOURCES for p in tree.glob(pattern)})
    for path in files:
        rel = str(path.relative_to(tree))
        if rel in NOT_EMULATED:
            continue
        text = path.read_text()
        for match in _code_positions(text):
            end = _call_end(text, match.end() - 1)
            call = text[match.start():end]
            line = text.count("\n", 0, match.start()) + 1
            argument = text[match.end():end - 1]
            if match.group(0).startswith("__syncthreads_"):
                replacement = f"({argument})"  # each thread keeps its own predicate
            else:
                replacement = "(void)0"       # the statement stays, the barrier is gone
            mutated = text[:match.start()] + replacement + text[end:]
            what = call.split("(")[0] + "(...)" if argument.strip() else call
            mutants.append(Mutant(rel, line, what, text, mutated))
    return mutants


def layout_mutants(tree: pathlib.Path) -> list[Mutant]:
    mutants = []
    for rel, old, new in LAYOUT_MUTANTS:
        text = (tree / rel).read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{rel}: expected `{old}` once; update LAYOUT_MUTANTS")
        line = text[:text.index(old)].count("\n") + 1
        mutants.append(Mutant(rel, line, f"layout: {new}", text, text.replace(old, new)))
    return mutants


def copy_tree(dest: pathlib.Path) -> None:
    """The files git sees (tracked and untracked, not ignored) and the compiled extension."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    extensions = [str(p.relative_to(ROOT)) for p in (ROOT / "trp_kernels").glob("_C*.so")]
    for rel in filter(None, listed + extensions):
        source = ROOT / rel
        if source.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            # A fresh modification time, so that ninja rebuilds what a mutant left behind.
            if not target.exists() or target.read_bytes() != source.read_bytes():
                shutil.copyfile(source, target)


def run_tests(tree: pathlib.Path, pytest_args: list[str]) -> tuple[bool, str, float]:
    """(passed, the first failing test or the error, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.time()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", *pytest_args], cwd=tree,
                                env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {TIMEOUT_S} s", time.time() - start
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return True, "", time.time() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", output, re.M)
    if failed:
        return False, failed[0], time.time() - start
    # The process died (faulthandler's report): its error, in the last test pytest -v named.
    crash = re.search(r"Fatal Python error: (.+)", output)
    tests = re.findall(r"^(tests/\S+::\S+)", output, re.M)
    if crash:
        where = f" in {tests[-1]}" if tests else ""
        return False, f"a crash ({crash.group(1).strip()}){where}", time.time() - start
    return False, output.strip().splitlines()[-1], time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", action="append", default=[],
                        help="only mutants whose name contains this (repeat: any of them)")
    parser.add_argument("--tree", default="build/barrier-mutants",
                        help="where the copy of the tree goes (two runs need two copies)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip checking that the unmutated tree passes the tests")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("pytest_args", nargs="*",
                        help="the pytest arguments for every mutant (default: tests_for(file))")
    args = parser.parse_args()
    tree = ROOT / args.tree
    copy_tree(tree)
    if not args.no_baseline:
        passed, failure, seconds = run_tests(tree, args.pytest_args or DEFAULT_TESTS)
        if not passed:
            print(f"the unmutated tree fails the tests: {failure}", file=sys.stderr)
            return 1
        print(f"unmutated: tests pass in {seconds:.0f} s", flush=True)
    mutants = [m for m in barrier_mutants(tree) + layout_mutants(tree)
               if not args.filter or any(text in m.name for text in args.filter)]
    rows = []
    for mutant in mutants:
        path = tree / mutant.path
        path.write_text(mutant.mutated)
        try:
            passed, failure, seconds = run_tests(tree, args.pytest_args or tests_for(mutant.path))
        finally:
            path.write_text(mutant.original)
        caught = "survived" if passed else f"caught by {failure}"
        rows.append((mutant, caught))
        print(f"{mutant.name}: {caught} ({seconds:.0f} s)", flush=True)
    barriers = [(m, c) for m, c in rows if not m.what.startswith("layout")]
    caught_barriers = sum(c != "survived" for _, c in barriers)
    print(f"\nbarrier deletions caught: {caught_barriers} of {len(barriers)}; "
          f"layout mutants caught: {sum(c != 'survived' for m, c in rows) - caught_barriers} "
          f"of {len(rows) - len(barriers)}")
    if args.markdown:
        print("\n| mutant | result |\n|---|---|")
        for mutant, caught in rows:
            print(f"| `{mutant.path}:{mutant.line}` {mutant.what} | {caught} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
