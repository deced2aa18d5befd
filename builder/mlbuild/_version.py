"""mlbuild's version: a leaf every module imports it from (never from the package, whose
``__init__`` re-exports the whole API). pyproject.toml's version must say the same."""

__version__ = "0.1.0"
