"""bench's defaults, shown in ``--help``: importable without numpy or onnx."""

from __future__ import annotations

#: bench: minimum rounds (each times every configuration once), untimed runs first, the time
#: budget per model, the relative CI half-width to stop at, the default providers and levels,
#: and the slowdown a --baseline gate allows beyond the noise.
DEFAULT_ITERATIONS = 20
DEFAULT_WARMUP = 5
DEFAULT_MAX_SECONDS = 10.0
DEFAULT_TARGET_CI = 0.02
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
DEFAULT_LEVELS = ("disable_all", "basic")
DEFAULT_MAX_SLOWDOWN = 0.05
