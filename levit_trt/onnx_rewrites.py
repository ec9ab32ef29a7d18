"""ONNX graph rewrites: last-axis Softmax nodes become the TensorRT softmax plugin's nodes.

TensorRT's ONNX parser imports a node whose op_type it has no importer for through its plugin
fallback: it asks the plugin registry for a creator named op_type, with the version and namespace
given by the node's string attributes `plugin_version` and `plugin_namespace`, and passes the
attributes named by the creator's fields (here `axis`) to createPlugin. The parser ignores the
node's domain; we put the nodes in their own domain (imported in the model) so that onnx.checker
accepts the rewritten model. ONNX Runtime cannot run the rewritten model: it is for TensorRT only,
with the plugin library loaded first (`levit_trt.plugins.trt_plugin_library()`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

from levit_trt.plugins import softmax_plugin_identity

PLUGIN_DOMAIN = "levit_trt"
PLUGIN_DOMAIN_VERSION = 1
# Bump when replace_softmax_with_plugin writes other nodes for the same input (cached rewrites are keyed by it).
REWRITE_VERSION = 1
PLUGIN_AXIS = -1
_ONNX_DOMAINS = ("", "ai.onnx")
_PLUGIN_ELEMENT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


@dataclass
class _NodeList:
    """Where Softmax nodes can live: a graph (main or nested) or a local function's body."""

    where: str
    nodes: Any  # the protobuf repeated field of NodeProto (untyped in onnx's stubs)
    onnx_opset: int
    is_main_graph: bool = False
    function: onnx.FunctionProto | None = None


def _opset_version(opset_imports: Iterable[onnx.OperatorSetIdProto], default: int) -> int:
    for opset in opset_imports:
        if opset.domain in _ONNX_DOMAINS:
            return int(opset.version)
    return default


def _node_lists(model: onnx.ModelProto) -> Iterator[_NodeList]:
    model_opset = _opset_version(model.opset_import, onnx.defs.onnx_opset_version())

    def graphs(graph: onnx.GraphProto, where: str) -> Iterator[_NodeList]:
        yield _NodeList(where, graph.node, model_opset, is_main_graph=graph is model.graph)
        for node in graph.node:
            for attribute in node.attribute:
                for sub in _subgraphs(attribute):
                    yield from graphs(sub, f"{where}/{node.name or node.op_type}.{attribute.name}")

    yield from graphs(model.graph, "main graph")
    for function in model.functions:
        yield _NodeList(f"function {function.domain}::{function.name}", function.node,
                        _opset_version(function.opset_import, model_opset), function=function)


def _subgraphs(attribute: onnx.AttributeProto) -> list[onnx.GraphProto]:
    """Graphs held by a node attribute (If branches, Loop and Scan bodies)."""
    return ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Tensor types (element type and shape, where known) after ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError):
        inferred = model  # fall back on whatever the exporter recorded

    types: dict[str, onnx.TypeProto] = {}

    def collect(graph: onnx.GraphProto) -> None:
        for value in (*graph.input, *graph.value_info, *graph.output):
            if value.type.HasField("tensor_type"):
                types[value.name] = value.type
        for node in graph.node:
            for attribute in node.attribute:
                for sub in _subgraphs(attribute):
                    collect(sub)

    collect(inferred.graph)
    return types


def _rank(value_type: onnx.TypeProto | None) -> int | None:
    if value_type is None or not value_type.tensor_type.HasField("shape"):
        return None
    return len(value_type.tensor_type.shape.dim)


def _softmax_axis(node: onnx.NodeProto, onnx_opset: int) -> int:
    for attribute in node.attribute:
        if attribute.name == "axis":
            return int(attribute.i)
    return -1 if onnx_opset >= 13 else 1  # the default changed in opset 13


def _check_last_axis(node: onnx.NodeProto, where: str, axis: int, value_type: onnx.TypeProto | None) -> None:
    """Raise ValueError unless the node normalises the last axis of a rank >= 2 fp32/fp16 tensor.

    Before opset 13 Softmax flattens the axes from `axis` on; with axis = rank - 1 (or -1) that is
    the last axis alone, the same function as in opset 13 and the plugin's.
    """
    label = f"Softmax node {node.name!r} ({where})"
    rank = _rank(value_type)
    if axis >= 0:
        if rank is None:
            raise ValueError(
                f"{label} has axis={axis}, but the rank of its input {node.input[0]!r} is unknown, so it cannot "
                "be shown to be the last axis; export with static ranks or axis=-1"
            )
        is_last = axis == rank - 1
    else:
        is_last = axis == -1
    if not is_last:
        rank_text = f"rank-{rank}" if rank is not None else "input of unknown rank"
        raise ValueError(
            f"{label} normalises axis {axis} of a {rank_text} tensor, not the last axis; the softmax plugin "
            "supports the last axis only"
        )
    if rank is not None and rank < 2:
        raise ValueError(f"{label} has a rank-{rank} input; the TensorRT plugin needs rank >= 2")
    element_type = value_type.tensor_type.elem_type if value_type is not None else onnx.TensorProto.UNDEFINED
    if element_type not in (onnx.TensorProto.UNDEFINED, *_PLUGIN_ELEMENT_TYPES):
        raise ValueError(
            f"{label} works on {onnx.TensorProto.DataType.Name(element_type)}; the plugin supports FLOAT and "
            "FLOAT16 only"
        )


def _plugin_node(softmax: onnx.NodeProto) -> onnx.NodeProto:
    identity = softmax_plugin_identity()
    return helper.make_node(
        identity.name,
        inputs=list(softmax.input),
        outputs=list(softmax.output),
        name=softmax.name,
        domain=PLUGIN_DOMAIN,
        plugin_version=identity.version,
        plugin_namespace=identity.namespace,
        axis=PLUGIN_AXIS,
    )


def _import_plugin_domain(opset_imports: Any) -> None:
    if not any(opset.domain == PLUGIN_DOMAIN for opset in opset_imports):
        opset_imports.append(helper.make_opsetid(PLUGIN_DOMAIN, PLUGIN_DOMAIN_VERSION))


def standard_op_type(node: onnx.NodeProto) -> str:
    """The ONNX op a node computes: 'Softmax' for the plugin's softmax nodes, else its own op_type.

    Precision policies and layer reports name ONNX ops; a rewritten graph must keep its softmax
    float under the policy that keeps Softmax float.
    """
    if node.domain == PLUGIN_DOMAIN and node.op_type == softmax_plugin_identity().name:
        return "Softmax"
    return str(node.op_type)


def plugin_op_types(model: onnx.ModelProto) -> set[str]:
    """The op types of the plugin-domain nodes anywhere in `model`: the main graph, nested graphs (If, Loop,
    Scan bodies) and local functions, all of which TensorRT's parser imports."""
    return {str(node.op_type) for node_list in _node_lists(model) for node in node_list.nodes
            if node.domain == PLUGIN_DOMAIN}


def replace_softmax_with_plugin(model: onnx.ModelProto) -> int:
    """Replace every last-axis Softmax in `model` (in place) with a plugin node; return how many.

    Checks every Softmax before changing anything: one on another axis (or of unknown rank with a
    positive axis, or on a type other than fp32/fp16) raises ValueError naming the node, and the
    model is left as it was. The plugin outputs keep the shapes shape inference found for the
    Softmax outputs (as value_info), since ONNX cannot infer them through a custom op.
    """
    types = _value_types(model)
    planned: list[tuple[_NodeList, int]] = []
    for node_list in _node_lists(model):
        for index, node in enumerate(node_list.nodes):
            if node.op_type != "Softmax" or node.domain not in _ONNX_DOMAINS:
                continue
            axis = _softmax_axis(node, node_list.onnx_opset)
            _check_last_axis(node, node_list.where, axis, types.get(node.input[0]))
            planned.append((node_list, index))

    if not planned:
        return 0
    known_values = {value.name for value in (*model.graph.input, *model.graph.output, *model.graph.value_info)}
    for node_list, index in planned:
        softmax = node_list.nodes[index]
        output = softmax.output[0]
        if node_list.is_main_graph and output not in known_values and output in types:
            model.graph.value_info.append(helper.make_value_info(output, types[output]))
            known_values.add(output)
        node_list.nodes[index].CopyFrom(_plugin_node(softmax))
        if node_list.function is not None:
            _import_plugin_domain(node_list.function.opset_import)
    _import_plugin_domain(model.opset_import)
    return len(planned)
