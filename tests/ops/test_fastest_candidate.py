"""The rule of the conv's measured choice (csrc/include/trp/fastest_candidate.h): the lowest
median device time, ties within 3% to fewer launches; and the order of the rounds. Plain C++,
compiled and run here by the host compiler."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CXX = os.environ.get("CXX", "g++")


@pytest.mark.skipif(shutil.which(CXX) is None, reason="no C++ compiler")
def test_choice_rule(tmp_path):
    program = tmp_path / "fastest_candidate_checks"
    subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-Werror", f"-I{ROOT / 'csrc' / 'include'}",
                    str(HERE / "fastest_candidate_checks.cpp"), "-o", str(program)], check=True,
                   capture_output=True, text=True, timeout=300)
    done = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stdout + done.stderr
