"""Why a rule folds or does not: stable reason codes, the refusal a rule raises, and the names
nodes go by in messages.

A rule never returns "no" silently: it raises ``Skip`` with a reason code and a sentence.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

from bnfold.model import proto


class Reason(str, Enum):
    """Stable codes for what happened to a BatchNormalization (used in --json output)."""

    FOLDED = "folded"
    TRAINING_MODE = "training_mode"
    EXTRA_OUTPUTS = "extra_outputs"
    SPATIAL_MODE = "spatial_mode"
    NO_PRODUCER = "no_producer"
    UNSUPPORTED_PRODUCER = "unsupported_producer"
    SHARED_OUTPUT = "shared_output"
    GRAPH_OUTPUT = "graph_output"
    NON_CONSTANT_PARAM = "non_constant_param"
    NON_CONSTANT_WEIGHT = "non_constant_weight"
    FUNCTION_ATTRIBUTE = "function_attribute"
    SHAPE_MISMATCH = "shape_mismatch"
    NOT_PER_CHANNEL = "not_per_channel"
    UNKNOWN_RANK = "unknown_rank"
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    NON_FINITE = "non_finite"
    PADDED_CONV = "padded_conv"
    UNKNOWN_SHAPE = "unknown_shape"
    DECLARED_SHAPE_CONFLICT = "declared_shape_conflict"
    QUANTIZED_WEIGHT = "quantized_weight"
    QUANTIZED_ACTIVATION = "quantized_activation"


class Skip(Exception):
    """A BatchNormalization that must not be folded, with the reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@contextmanager
def unreadable_as_skip() -> Iterator[None]:
    """A constant the fold reads whose element type ONNX does not define (a damaged file, or a
    type from a newer ONNX) becomes a Skip for this node: its values cannot be read, so it stays,
    and the rest of the model folds as usual."""
    try:
        yield
    except proto.UnknownElementType as exc:
        raise Skip(Reason.UNSUPPORTED_DTYPE, f"{exc}, whose values bnfold cannot read") from None


class Defer(Exception):
    """The pattern touches a node already changed in this pass: look again in the next pass."""


def describe(node: proto.NodeProto) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} -> '{node.output[0]}'"


#: What a user can do about a refusal, where something can be done (shown by ``bnfold`` beside
#: each reason it reports, and listed in docs/reasons.md).
HINTS: dict[Reason, str] = {
    Reason.TRAINING_MODE: "export the model in inference mode (model.eval() before exporting)",
    Reason.EXTRA_OUTPUTS: "export the model in inference mode (model.eval() before exporting)",
    Reason.NON_CONSTANT_PARAM: "keep BN parameters out of the graph inputs "
    "(torch.onnx.export(..., keep_initializers_as_inputs=False))",
    Reason.NON_CONSTANT_WEIGHT: "keep the layer's weights out of the graph inputs "
    "(torch.onnx.export(..., keep_initializers_as_inputs=False))",
    Reason.UNKNOWN_RANK: "give the graph inputs static shapes, or run onnx shape inference on "
    "the model first",
    Reason.UNKNOWN_SHAPE: "give the graph inputs static shapes, or run onnx shape inference on "
    "the model first",
    Reason.NON_FINITE: "fold the float32 model, then convert it to float16",
}
