# The one place the version lives: pyproject.toml reads it (setuptools evaluates this assignment
# statically, before the extension is built) and trp_kernels.__version__ re-exports it.
__version__ = "0.1.0"
