"""mlbuild: turn a Python model directory into one self-contained, reproducible container image."""

__version__ = "0.1.0"
