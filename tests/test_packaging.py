"""pyproject.toml's extras: ONNX export is an extra of its own, which the test extra includes, and
the README tells a user to install it (README, "Install")."""

import os
import re

try:
    import tomllib
except ImportError:  # Python 3.10: the test extra brings tomli
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def extras():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def names(requirements):
    # "tomli; python_version < '3.11'" -> "tomli"
    return {re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0] for r in requirements}


def test_onnx_extra_brings_the_exporter_and_runtime():
    # torch.onnx's exporter needs onnx and onnxscript; measure="onnxruntime" needs onnxruntime.
    assert names(extras()["onnx"]) == {"onnx", "onnxscript", "onnxruntime"}


def test_test_extra_includes_the_onnx_extra():
    # The suite exports to ONNX and runs the result, so the test extra must bring the onnx one.
    assert "trp_kernels[onnx]" in extras()["test"]


def test_readme_install_names_the_onnx_extra():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert '".[onnx]"' in readme and "trp_kernels[onnx]" in readme


def test_a_build_without_torch_names_the_install_that_works():
    """``pip install .`` builds in an isolated environment without the user's torch: setup.py
    stops with the command that works, for a regular and an editable install."""
    import subprocess
    import sys

    script = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; "
              "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "pip install --no-build-isolation ." in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr


def test_readme_names_the_regular_install():
    with open(os.path.join(ROOT, "README.md")) as f:
        assert re.search(r"pip install (-v )?--no-build-isolation \.\s", f.read())
