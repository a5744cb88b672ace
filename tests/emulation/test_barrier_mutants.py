"""tools/barrier_mutants.py without running a mutant: which barriers it finds and how it deletes
them, that its shared-memory layout mutants still match the sources, and that the table of
docs/cuda_svd.md, "Mutation test" lists the barriers the kernels have now."""

from __future__ import annotations

import collections
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import barrier_mutants  # noqa: E402

KERNEL = """\
// A comment naming __syncthreads() is no barrier.
__global__ void k(float* x) {
  x[threadIdx.x] = 1;
  __syncthreads();
  if (__syncthreads_or(x[0] > f(1, 2))) return;
  cg::this_grid().sync();
  grid.sync();
  __syncwarp(0xffffffffu);
}
"""


def test_finds_and_deletes_each_barrier_in_code(tmp_path):
    (tmp_path / "csrc" / "cuda").mkdir(parents=True)
    (tmp_path / "csrc" / "cuda" / "k.cu").write_text(KERNEL)
    mutants = barrier_mutants.barrier_mutants(tmp_path)
    assert [(m.line, m.what) for m in mutants] == [
        (4, "__syncthreads()"), (5, "__syncthreads_or(...)"), (6, "cg::this_grid().sync()"),
        (7, "grid.sync()"), (8, "__syncwarp(...)")]
    lines = {m.line: m.mutated.splitlines()[m.line - 1] for m in mutants}
    assert lines == {4: "  (void)0;",
                     5: "  if ((x[0] > f(1, 2))) return;",  # each thread keeps its predicate
                     6: "  (void)0;", 7: "  (void)0;", 8: "  (void)0;"}
    for mutant in mutants:  # only that line changes
        before, after = mutant.original.splitlines(), mutant.mutated.splitlines()
        assert [i for i, (a, b) in enumerate(zip(before, after)) if a != b] == [mutant.line - 1]


def _code_barriers(path: pathlib.Path) -> int:
    """Barrier calls on lines that are not comments, counted independently of the tool."""
    pattern = re.compile(r"__syncthreads(_or|_and|_count)?\s*\(|__syncwarp\s*\(|\.sync\s*\(")
    return sum(len(pattern.findall(line.split("//")[0])) for line in path.read_text().splitlines())


def test_every_barrier_of_the_kernels_is_a_mutant():
    mutants = barrier_mutants.barrier_mutants(ROOT)
    per_file = collections.Counter(m.path for m in mutants)
    sources = {p for pattern in barrier_mutants.SOURCES for p in ROOT.glob(pattern)}
    expected = {str(p.relative_to(ROOT)): _code_barriers(p) for p in sources
                if str(p.relative_to(ROOT)) not in barrier_mutants.NOT_EMULATED}
    assert per_file == {path: n for path, n in expected.items() if n}
    assert len(mutants) > 30  # the block reductions, both SVD paths, the conv kernel


def test_layout_mutants_match_the_sources():
    # Raises SystemExit where a source no longer holds the text a mutant changes.
    mutants = barrier_mutants.layout_mutants(ROOT)
    assert len(mutants) == len(barrier_mutants.LAYOUT_MUTANTS)
    assert all(m.mutated != m.original for m in mutants)


def test_the_docs_table_lists_the_barriers_of_today():
    # Line numbers move with every edit; which barriers each file has does not, unless one is
    # added or removed, and then the table is out of date: rerun the tool.
    text = (ROOT / "docs" / "cuda_svd.md").read_text()
    table = text.split("## Mutation test", 1)[1]
    rows = re.findall(r"^\| `([^`:]+):\d+` (\S+) \|", table, re.M)
    listed = collections.Counter(rows)
    current = collections.Counter((m.path, m.what) for m in barrier_mutants.barrier_mutants(ROOT))
    assert listed == current
