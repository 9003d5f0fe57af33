"""Default values the command line shows in ``--help``, importable without numpy or onnx."""

from __future__ import annotations

#: Timed runs and warm-up runs of each benchmark configuration.
DEFAULT_ITERATIONS = 50
DEFAULT_WARMUP = 5

#: Seconds one verification may take.
DEFAULT_TIMEOUT = 600.0
