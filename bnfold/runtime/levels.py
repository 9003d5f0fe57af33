"""onnxruntime's graph optimization levels by the names bnfold gives them (``--level``, reports),
kept apart from the sessions so that naming a level imports nothing."""

from __future__ import annotations

#: bnfold's level names -> onnxruntime's GraphOptimizationLevel members
ORT_LEVELS = {
    "disable_all": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
