"""One way to write down what happened to a BatchNormalization or scale Mul/Add."""

from __future__ import annotations

from bnfold.fold.report import BNDecision
from bnfold.fold.rules.chain import Chain
from bnfold.fold.rules.reasons import Reason
from bnfold.model import proto
from bnfold.model.graph import Scope


def decide(
    scope: Scope,
    node: proto.NodeProto,
    reason: Reason,
    message: str,
    *,
    layer: proto.NodeProto | None,
    chain: Chain | None,
    data_input: str = "",
) -> BNDecision:
    """The decision about ``node``; ``layer`` is the layer before it (when one was found) and
    ``chain`` the walk to it (for the nodes looked through); ``data_input`` is the value a scale
    Mul/Add scales or shifts (which ``check`` needs to tell a BN's shift from a layer's bias)."""
    return BNDecision(
        node=node.name,
        output=node.output[0] if node.output else "",
        graph=scope.path,
        status="folded" if reason is Reason.FOLDED else "skipped",
        reason=reason.value,
        message=message,
        producer=layer.op_type if layer is not None else None,
        producer_node=(layer.name or layer.output[0]) if layer is not None else None,
        through=tuple(n.op_type for n in reversed(chain.through)) if chain else (),
        op=node.op_type,
        input=data_input,
    )
