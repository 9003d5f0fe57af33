"""The JSON Schema (draft 2020-12) of every document ``--json`` prints; ``bnfold schema``.

Objects allow more properties than they list: fields are only ever added within a major
version (``schema_version`` changes when one is renamed or removed).
"""

from __future__ import annotations

from typing import Any

from bnfold.cli.documents import SCHEMA_VERSION

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_STRING_OR_NULL = {"type": ["string", "null"]}


def _object(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **optional},
    }


_ERROR = _object({"type": {"type": "string"}, "message": {"type": "string"}})

_DECISION = _object(
    {
        "node": {"type": "string"},
        "output": {"type": "string"},
        "graph": {"type": "string"},
        "status": {"enum": ["folded", "skipped"]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "producer": _STRING_OR_NULL,
        "producer_node": _STRING_OR_NULL,
        "through": {"type": "array", "items": {"type": "string"}},
        "op": {"enum": ["BatchNormalization", "Mul", "Add"]},
    },
    input={"type": "string"},
    kind={"enum": ["batchnorm", "scale", "bias"]},
)

_COUNT = {"type": "integer", "minimum": 0}
_TALLY = _object({"folded": _COUNT, "total": _COUNT})
#: folded and total per kind: BatchNormalization, scale Mul/Add, bias Add (one vocabulary for
#: fold, inspect, check and the one-line -q output)
_COUNTS = _object({"batchnorm": _TALLY, "scale": _TALLY, "bias": _TALLY})

_REPORT = _object(
    {
        "total": _COUNT,
        "bn_total": _COUNT,
        "bn_folded": _COUNT,
        "folded": _COUNT,
        "skipped": _COUNT,
        "nodes_before": _COUNT,
        "nodes_after": _COUNT,
        "skip_reasons": {"type": "object", "additionalProperties": _COUNT},
        "decisions": {"type": "array", "items": {"$ref": "#/$defs/decision"}},
    },
    counts=_COUNTS,
    materialized_bytes=_COUNT,
    copied_bytes=_COUNT,
)

_OUTPUT = _object(
    {
        "name": {"type": "string"},
        "dtype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "max_abs": _NUMBER_OR_NULL,
        "max_rel": _NUMBER_OR_NULL,
        "mean_abs": _NUMBER_OR_NULL,
        "rtol": {"type": "number"},
        "atol": {"type": "number"},
        "min_atol": _NUMBER_OR_NULL,
        "min_rtol": _NUMBER_OR_NULL,
        "passed": {"type": "boolean"},
    }
)

_VERIFICATION = _object(
    {
        "status": {"enum": ["passed", "failed", "unverified"]},
        "backend": _STRING_OR_NULL,
        "reason": _STRING_OR_NULL,
        "samples": _COUNT,
        "seed": {"type": "integer"},
        "input_shapes": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "integer"}},
        },
        "outputs": {"type": "array", "items": {"$ref": "#/$defs/output"}},
        "notes": {"type": "array", "items": {"type": "string"}},
        "seconds": {"type": "number"},
    },
    backend_version=_STRING_OR_NULL,
    providers={"type": "array", "items": {"type": "string"}},
)

_MODEL = _object(
    {
        "input": {"type": "string"},
        "status": {
            "enum": [
                "folded",
                "unchanged",
                "unverified",
                "verification_failed",
                "inspected",
                "clean",
                "foldable",
                "error",
            ]
        },
        "output": _STRING_OR_NULL,
        "written": {"type": "array", "items": {"type": "string"}},
        "exit_code": {"enum": [0, 1, 2, 3, 4]},
        "error": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/error"}]},
        "report": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/report"}]},
        "verification": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/verification"}]},
    },
    size_before={"type": ["integer", "null"], "minimum": 0},
    size_after={"type": ["integer", "null"], "minimum": 0},
    record={"type": ["object", "null"]},
)

_HEADER = {
    "bnfold": {"type": "string"},
    "schema_version": {"const": SCHEMA_VERSION},
    "exit_code": {"enum": [0, 1, 2, 3, 4]},
}

_BATCH = _object(
    {
        **_HEADER,
        "command": {"enum": ["fold", "inspect", "check"]},
        "summary": _object(
            {
                "models": _COUNT,
                "errors": _COUNT,
                "bn_total": _COUNT,
                "folded": _COUNT,
                "skipped": _COUNT,
                "statuses": {"type": "object", "additionalProperties": _COUNT},
            },
            bn_folded=_COUNT,
            counts=_COUNTS,
        ),
        "models": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/model"}},
    }
)

_VERIFY = _object(
    {
        **_HEADER,
        "command": {"const": "verify"},
        "original": {"type": "string"},
        "candidate": {"type": "string"},
        "verification": {"$ref": "#/$defs/verification"},
    },
    record={
        "oneOf": [
            {"type": "null"},
            _object(
                {
                    "status": {"enum": ["match", "mismatch", "none"]},
                    "recorded_sha256": _STRING_OR_NULL,
                    "original_sha256": _STRING_OR_NULL,
                    "detail": _STRING_OR_NULL,
                }
            ),
        ]
    },
)

_INTERVAL = {"type": "array", "items": _NUMBER_OR_NULL, "minItems": 2, "maxItems": 2}
#: significant: the interval excludes 1 (absent in documents written before it was added)
_SPEEDUP = _object({"median": _NUMBER_OR_NULL, "ci95": _INTERVAL}, significant={"type": "boolean"})
_RUN = {
    **_object(
        {
            "model": {"enum": ["original", "folded"]},
            "provider": {"type": "string"},
            "optimization": {"enum": ["disable_all", "basic", "extended", "all"]},
            "batch_size": {"type": ["integer", "null"]},
            "threads": {"type": ["integer", "null"]},
            "session_ms": _NUMBER_OR_NULL,
            "median_ms": _NUMBER_OR_NULL,
            "p90_ms": _NUMBER_OR_NULL,
            "ci95_ms": _INTERVAL,
        }
    ),
    # every latency is in a key ending in _ms: no seconds, no unit-less latency
    "propertyNames": {"not": {"pattern": "(_s|_seconds|latency)$"}},
}
_BENCH_ENTRY = _object(
    {
        "model": {"type": "string"},
        "runs": {"type": "array", "items": {"$ref": "#/$defs/run"}},
        "speedup": {"type": "object", "additionalProperties": {"$ref": "#/$defs/speedup"}},
        "noisy": {"type": "boolean"},
        "error": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/error"}]},
    }
)
_BENCH = _object(
    {
        **_HEADER,
        "command": {"const": "bench"},
        "models": {"type": "array", "items": {"type": "string"}},
        "benches": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/bench_entry"}},
        "baseline": {"type": ["object", "null"]},
    },
    plot=_STRING_OR_NULL,
    error={"oneOf": [{"type": "null"}, {"$ref": "#/$defs/error"}]},
)

_COMMAND_ERROR = _object(
    {
        **_HEADER,
        "command": {"enum": ["fold", "inspect", "check", "verify", "bench", "schema"]},
        "error": {"$ref": "#/$defs/error"},
        "summary": {"type": "null"},
        "models": {"type": "array", "maxItems": 0},
    }
)

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"https://github.com/bnfold/bnfold/schema/v{SCHEMA_VERSION}.json",
    "title": "bnfold --json document",
    "description": "One document per invocation on stdout: fold/inspect/check (a batch), "
    "verify, bench, or an error before any model ran (usage errors included).",
    "oneOf": [
        {"$ref": "#/$defs/command_error"},
        {"$ref": "#/$defs/batch"},
        {"$ref": "#/$defs/verify"},
        {"$ref": "#/$defs/bench"},
    ],
    "$defs": {
        "error": _ERROR,
        "decision": _DECISION,
        "report": _REPORT,
        "output": _OUTPUT,
        "verification": _VERIFICATION,
        "model": _MODEL,
        "batch": _BATCH,
        "verify": _VERIFY,
        "bench": _BENCH,
        "bench_entry": _BENCH_ENTRY,
        "run": _RUN,
        "speedup": _SPEEDUP,
        "command_error": _COMMAND_ERROR,
    },
}
