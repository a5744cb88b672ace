"""The README's Python examples run as written (a user's first contact with the API)."""

import os
import re

import pytest
from single_thread import one_cpu_thread  # noqa: F401  (autouse: one CPU thread per test)

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks():
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_examples():
    assert python_blocks(), "README.md lost its ```python examples"


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(index):
    # The examples hold their own asserts (ranks, conv-pair outputs); an exception fails here.
    exec(compile(python_blocks()[index], f"README.md[python block {index}]", "exec"), {})


ROOT = os.path.dirname(README)
DOCS = [README] + sorted(
    os.path.join(ROOT, "docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
    if name.endswith(".md")
)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(doc):
    # A clone has only the repository: every relative link must name a file inside it.
    with open(doc) as f:
        targets = re.findall(r"\]\(([^)\s]+)\)", f.read())
    for target in targets:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(doc), target.split("#")[0]))
        assert path.startswith(ROOT + os.sep), f"{target} leaves the repository"
        assert os.path.exists(path), f"{target} does not exist"


SOURCE_SUFFIXES = (".py", ".md", ".cpp", ".h", ".cu", ".cuh", ".sh", ".toml", ".txt", ".cfg")
SKIPPED_DIRS = {".git", "build", "dist", "__pycache__", ".pytest_cache", ".benchmarks", "runs"}
# Built from parts so that this file does not match itself.
OUTSIDE_REFERENCE = re.compile("|".join([r"\.\./" + "shared", "DESIGN" + r"\.md",
                                         r"\b" + "issue" + r" \d+"]))


def test_no_reference_outside_the_repository():
    # The contract lives in docs/design.md: a user's clone holds only the repository.
    hits = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if not name.endswith(SOURCE_SUFFIXES) and name != "run":
                continue
            path = os.path.join(folder, name)
            with open(path, errors="replace") as f:
                for number, line in enumerate(f, 1):
                    if OUTSIDE_REFERENCE.search(line):
                        hits.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
