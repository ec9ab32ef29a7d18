"""Precision policies: which nodes of a LeViT ONNX graph stay in float when the rest goes to INT8.

A node "in INT8" is one whose activation inputs pass through a QuantizeLinear/DequantizeLinear pair
(TensorRT then runs it with INT8 inputs); a node kept float gets its inputs unquantized. The same
policy drives the Q/DQ ONNX (`levit_trt.quantize`) and TensorRT 10's per-layer float constraints.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # onnx is imported where a graph is read, so the CLI parser starts without it
    import onnx

# The op types that get INT8 inputs at all: the weighted layers, the attention matmuls, the
# elementwise adds/muls between activations, the activations and softmax. Data movement (Reshape,
# Transpose, Split, Slice) is left out: TensorRT moves Q/DQ across it by itself.
QDQ_OP_TYPES = ("QuantizeLinear", "DequantizeLinear")
QUANTIZED_OP_TYPES: tuple[str, ...] = (
    "Conv", "Gemm", "MatMul", "Add", "Mul", "HardSwish", "HardSigmoid", "Softmax",
)
_ELEMENTWISE = ("Add", "Mul")


class PolicyError(ValueError):
    """An unknown policy, op type or node name; the message lists the valid ones."""


def _op_typed_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """Each node with the ONNX op it computes: the softmax plugin's nodes count as Softmax, so a
    policy means the same nodes in a graph with the plugin (`onnx_rewrites.standard_op_type`)."""
    from levit_trt.onnx_rewrites import standard_op_type

    return [(node, standard_op_type(node)) for node in model.graph.node]


def _constants(model: onnx.ModelProto) -> dict[str, int]:
    """Names of constant tensors (initializers and Constant outputs) -> their rank."""
    ranks = {init.name: len(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            ranks[node.output[0]] = len(value.dims) if value is not None else 0
    return ranks


def _is_epilogue(node: onnx.NodeProto, constants: dict[str, int]) -> bool:
    """An Add/Mul of a bias vector or scale scalar: part of the matmul or conv before it, as TensorRT
    fuses it; its input is that layer's float accumulator, never a point to quantize."""
    return node.op_type in _ELEMENTWISE and any(constants.get(name, 99) <= 1 for name in node.input)


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that get INT8 inputs when no policy keeps anything float, in graph order."""
    constants = _constants(model)
    return [node.name for node, op_type in _op_typed_nodes(model)
            if op_type in QUANTIZED_OP_TYPES and not _is_epilogue(node, constants)]


def attention_bias_adds(model: onnx.ModelProto) -> set[str]:
    """The Adds of a constant [heads, N, N] attention bias to the scaled q@k scores before a Softmax."""
    constants = _constants(model)
    softmax_inputs = {node.input[0] for node, op_type in _op_typed_nodes(model) if op_type == "Softmax"}
    return {node.name for node in model.graph.node
            if node.op_type == "Add" and node.output[0] in softmax_inputs
            and any(constants.get(name) == 3 for name in node.input)}


@dataclass(frozen=True)
class PrecisionPolicy:
    """A named choice of float nodes: by op type, by node name, and the attention-bias Adds."""

    name: str
    description: str
    float_op_types: tuple[str, ...] = ()
    float_node_names: tuple[str, ...] = ()
    float_attention_bias_add: bool = False

    def float_nodes(self, model: onnx.ModelProto) -> set[str]:
        """Names of the nodes of `model` this policy keeps in float; unknown node names are an error."""
        names = [node.name for node in model.graph.node]
        missing = [n for n in self.float_node_names if n not in set(names)]
        if missing:
            close = difflib.get_close_matches(missing[0], names, n=3)
            raise PolicyError(
                f"float node {missing[0]!r} is not in the graph"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
                + "; node names are those of the fp32 ONNX (see e.g. `python -m onnx.tools.net_drawer` or Netron)")
        chosen = {node.name for node, op_type in _op_typed_nodes(model) if op_type in self.float_op_types}
        chosen.update(self.float_node_names)
        if self.float_attention_bias_add:
            chosen |= attention_bias_adds(model)
        return chosen

    def manifest(self) -> dict[str, Any]:
        """The resolved contents, for cache keys and reports."""
        return {"name": self.name, "float_op_types": sorted(self.float_op_types),
                "float_node_names": sorted(self.float_node_names),
                "float_attention_bias_add": self.float_attention_bias_add}


DEFAULT_POLICY = "default"
POLICIES: dict[str, PrecisionPolicy] = {
    p.name: p for p in (
        PrecisionPolicy("all-int8", "every quantizable node in INT8 (the reference's first, lossy INT8 engine)"),
        # The reference's intermediate step. On levit_128s random weights (two calibration seeds) its
        # logit cosine to fp32 was 0.931 and 0.950 against all-int8's 0.918 and 0.943.
        PrecisionPolicy("activations", "only the Hardswish/HardSigmoid activations stay float",
                        float_op_types=("HardSwish", "HardSigmoid")),
        PrecisionPolicy(
            DEFAULT_POLICY,
            "the layers the reference found sensitive stay float: Hardswish/HardSigmoid activations, "
            "Softmax and the attention-bias Add",
            float_op_types=("HardSwish", "HardSigmoid", "Softmax"), float_attention_bias_add=True),
    )
}


def _check_op_types(op_types: Sequence[str]) -> None:
    for op_type in op_types:
        if op_type in QUANTIZED_OP_TYPES:
            continue
        close = difflib.get_close_matches(op_type, QUANTIZED_OP_TYPES, n=1, cutoff=0.5) or [
            t for t in QUANTIZED_OP_TYPES if t.lower() == op_type.lower()]
        import onnx

        what = ("is an ONNX op that is never quantized, so keeping it float changes nothing"
                if onnx.defs.has(op_type) else "is not an ONNX op type")
        raise PolicyError(
            f"float op type {op_type!r} {what}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; valid op types: {', '.join(QUANTIZED_OP_TYPES)}")


def resolve_policy(name: str, extra_op_types: Sequence[str] = (), extra_nodes: Sequence[str] = ()) -> PrecisionPolicy:
    """The policy `name` from POLICIES, plus extra op types and node names to keep float."""
    base = POLICIES.get(name)
    if base is None:
        raise PolicyError(f"unknown precision policy {name!r}; valid policies: {', '.join(POLICIES)}")
    _check_op_types(extra_op_types)
    if not extra_op_types and not extra_nodes:
        return base
    return PrecisionPolicy(
        name=base.name, description=base.description,
        float_op_types=tuple(dict.fromkeys((*base.float_op_types, *extra_op_types))),
        float_node_names=tuple(dict.fromkeys((*base.float_node_names, *extra_nodes))),
        float_attention_bias_add=base.float_attention_bias_add,
    )
