"""ONNX graph rewrites: plugin nodes for the TensorRT softmax plugin (each last-axis Softmax) and for the
fused attention plugin (each LeViT attention subgraph, from the projections' outputs to what `proj` reads).

TensorRT's ONNX parser imports a node whose op_type it has no importer for through its plugin
fallback: it asks the plugin registry for a creator named op_type, with the version and namespace
given by the node's string attributes `plugin_version` and `plugin_namespace`, and passes the
attributes named by the creator's fields (`axis`; `num_heads`, `key_dim`, `val_dim`, `scale`) to createPlugin. The parser ignores the
node's domain; we put the nodes in their own domain (imported in the model) so that onnx.checker
accepts the rewritten model. ONNX Runtime cannot run the rewritten model: it is for TensorRT only,
with the plugin library loaded first (levit_trt.tensorrt.plugin_libraries loads the ones a graph uses). Each
node's identity is read from its plugin's identity header (`levit_trt.plugins`), which the C++ side compiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from levit_trt.plugins import attention_plugin_identity, softmax_plugin_identity

PLUGIN_DOMAIN = "levit_trt"
PLUGIN_DOMAIN_VERSION = 1
# Bump when replace_softmax_with_plugin or replace_attention_with_plugin writes other nodes for the same input
# (cached rewrites and exports are keyed by it). 2: the attention rewrite was added.
REWRITE_VERSION = 2
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


class AttentionPatternError(ValueError):
    """A Softmax whose surroundings are not (provably) a LeViT attention subgraph; the message names the node."""


@dataclass(frozen=True)
class AttentionMatch:
    """One matched attention subgraph: what the plugin node reads and writes, and which nodes it replaces."""

    name: str
    inputs: tuple[str, ...]  # (qkv, bias) or (kv, q, bias), the plugin's input order
    output: str
    num_heads: int
    key_dim: int
    val_dim: int
    scale: float
    replaced: frozenset[int]  # indices into graph.node


class _GraphIndex:
    """Producers, consumers and constant values of one graph's tensors, for walking a pattern."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for index, node in enumerate(graph.node):
            for name in node.output:
                self.producer[name] = index
            for name in node.input:
                self.consumers.setdefault(name, []).append(index)
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.outputs = {value.name for value in graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output; None for computed tensors."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        index = self.producer.get(name)
        if index is not None:
            node = self.graph.node[index]
            if node.op_type == "Constant" and node.domain in _ONNX_DOMAINS and len(node.attribute) == 1 \
                    and node.attribute[0].name == "value":
                return numpy_helper.to_array(node.attribute[0].t)
        return None


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


class _AttentionWalker:
    """Follows the exported pattern around one Softmax; every step that does not match raises, naming the node."""

    def __init__(self, index: _GraphIndex, softmax: int) -> None:
        self.index = index
        self.softmax = index.graph.node[softmax]
        self.visited: set[int] = {softmax}

    def fail(self, problem: str) -> AttentionPatternError:
        return AttentionPatternError(
            f"Softmax node {self.softmax.name!r} is not in a LeViT attention subgraph the attention plugin can "
            f"replace: {problem}. Export the explicit attention form with the dynamo exporter "
            "(levit_trt.export, the default), or use the softmax plugin rewrite instead")

    def node(self, tensor: str, op_type: str, what: str) -> onnx.NodeProto:
        """The node that produces `tensor`, which must be an `op_type` (marked as replaced)."""
        index = self.index.producer.get(tensor)
        node = self.index.graph.node[index] if index is not None else None
        if node is None or node.op_type != op_type or node.domain not in _ONNX_DOMAINS:
            found = f"{node.op_type} node {node.name!r}" if node is not None else "a graph input or initializer"
            raise self.fail(f"{what} {tensor!r} comes from {found}, expected {op_type}")
        assert index is not None
        self.visited.add(index)
        return node

    def only_consumer(self, tensor: str, op_type: str, what: str) -> onnx.NodeProto:
        """The one node that reads `tensor`, which must be an `op_type` (marked as replaced)."""
        readers = self.index.consumers.get(tensor, [])
        if len(readers) != 1 or tensor in self.index.outputs:
            raise self.fail(f"{what} {tensor!r} has {len(readers)} readers (or is a graph output), expected one")
        node = self.index.graph.node[readers[0]]
        if node.op_type != op_type or node.domain not in _ONNX_DOMAINS:
            raise self.fail(f"{what} {tensor!r} is read by {node.op_type} node {node.name!r}, expected {op_type}")
        self.visited.add(readers[0])
        return node

    def transpose(self, tensor: str, perm: list[int], what: str) -> str:
        node = self.node(tensor, "Transpose", what)
        if list(_attribute(node, "perm", [])) != perm:
            raise self.fail(f"Transpose node {node.name!r} has perm {list(_attribute(node, 'perm', []))}, expected {perm}")
        return str(node.input[0])

    def constant(self, tensor: str, what: str) -> np.ndarray:
        value = self.index.constant(tensor)
        if value is None:
            raise self.fail(f"{what} {tensor!r} is computed, not a constant")
        return value

    def reshape_dims(self, node: onnx.NodeProto, rank: int) -> list[int]:
        """The target shape of a Reshape: [-1 (batch), static dims...]; anything else is refused."""
        dims = [int(d) for d in self.constant(node.input[1], f"shape of Reshape node {node.name!r}").reshape(-1)]
        batch_ok = len(dims) == rank and (dims[0] == -1 or dims[0] >= 1)
        if not batch_ok or any(d < 1 for d in dims[1:]):
            raise self.fail(f"Reshape node {node.name!r} reshapes to {dims}, expected [-1, {rank - 1} static dims]")
        return dims[1:]

    def split(self, tensor: str, outputs: int, what: str) -> tuple[onnx.NodeProto, list[int], list[int]]:
        """The Split of a [B, N, H, D] reshape along its last axis: (split node, sizes, [N, H, D])."""
        split = self.node(tensor, "Split", what)
        if len(split.output) != outputs or _attribute(split, "axis", 0) not in (3, -1):
            raise self.fail(f"Split node {split.name!r} does not cut axis 3 into {outputs} parts")
        if len(split.input) > 1:
            sizes = [int(s) for s in self.constant(split.input[1], f"sizes of Split node {split.name!r}")]
        else:
            sizes = [int(s) for s in _attribute(split, "split", [])]
        reshape = self.node(split.input[0], "Reshape", f"input of Split node {split.name!r}")
        dims = self.reshape_dims(reshape, 4)
        if len(sizes) != outputs or sum(sizes) != dims[2]:
            raise self.fail(f"Split node {split.name!r} sizes {sizes} do not cut the head width {dims[2]}")
        return split, sizes, dims

    def match(self, onnx_opset: int) -> AttentionMatch:
        softmax = self.softmax
        if _softmax_axis(softmax, onnx_opset) not in (-1, 3):  # the scores are rank 4: axis 3 is the key axis
            raise self.fail(f"it normalises axis {_softmax_axis(softmax, onnx_opset)}, not the key axis")
        add = self.node(softmax.input[0], "Add", "the scores")
        bias_name, scaled = self._constant_operand(add, "bias")
        bias = self.constant(bias_name, "bias")
        mul = self.node(scaled, "Mul", "the biased scores' other operand")
        scale_name, products = self._constant_operand(mul, "scale")
        scale = self.constant(scale_name, "scale")
        if scale.size != 1:
            raise self.fail(f"Mul node {mul.name!r} scales by a tensor of shape {list(scale.shape)}, not a scalar")
        qk = self.node(products, "MatMul", "the scaled scores")
        q4 = self.transpose(qk.input[0], [0, 2, 1, 3], "q")
        k4 = self.transpose(qk.input[1], [0, 2, 3, 1], "k")
        av = self.only_consumer(softmax.output[0], "MatMul", "the attention weights")
        if av.input[0] != softmax.output[0]:
            raise self.fail(f"MatMul node {av.name!r} reads the weights as its second operand")
        v4 = self.transpose(av.input[1], [0, 2, 1, 3], "v")
        heads_out = self.only_consumer(av.output[0], "Transpose", "the attention output")
        if list(_attribute(heads_out, "perm", [])) != [0, 2, 1, 3]:
            raise self.fail(f"Transpose node {heads_out.name!r} does not swap heads and tokens back")
        merge = self.only_consumer(heads_out.output[0], "Reshape", "the transposed output")
        out_tokens, out_width = self.reshape_dims(merge, 3)

        split_index = self.index.producer.get(k4)
        self_attention = split_index is not None and q4 in self.index.graph.node[split_index].output
        split, sizes, (tokens_k, heads, _) = self.split(k4, 3 if self_attention else 2, "k")
        if self_attention:  # q, k, v from one qkv projection
            if [q4, k4, v4] != list(split.output) or sizes[0] != sizes[1]:
                raise self.fail(f"Split node {split.name!r} does not give q, k, v in that order with equal q/k widths")
            key_dim, val_dim, tokens_q = sizes[0], sizes[2], tokens_k
            inputs: tuple[str, ...] = (self._source(split),)
        else:  # downsample attention: k, v from kv, q from its own projection
            if [k4, v4] != list(split.output):
                raise self.fail(f"Split node {split.name!r} does not give k, v in that order")
            key_dim, val_dim = sizes
            q_reshape = self.node(q4, "Reshape", "q")
            tokens_q, q_heads, q_width = self.reshape_dims(q_reshape, 4)
            if (q_heads, q_width) != (heads, key_dim):
                raise self.fail(f"Reshape node {q_reshape.name!r} gives q {q_heads} heads of {q_width}, but k has "
                                f"{heads} of {key_dim}")
            inputs = (self._source(split), str(q_reshape.input[0]))
        if list(bias.shape) != [heads, tokens_q, tokens_k]:
            raise self.fail(f"bias {bias_name!r} has shape {list(bias.shape)}, expected {[heads, tokens_q, tokens_k]}")
        if bias.dtype not in (np.float32, np.float16):
            raise self.fail(f"bias {bias_name!r} is {bias.dtype}; the plugin supports float32 and float16 only")
        if bias_name not in self.index.initializers:
            raise self.fail(f"bias {bias_name!r} is a Constant node's output; the plugin takes it as an initializer")
        if (out_tokens, out_width) != (tokens_q, heads * val_dim):
            raise self.fail(f"Reshape node {merge.name!r} gives [{out_tokens}, {out_width}], expected "
                            f"[{tokens_q}, {heads * val_dim}]")
        self._check_enclosed(merge.output[0])
        # Named after the module where the bias says which one it is, so TensorRT's layer report does too.
        module = bias_name.removesuffix(".attention_bias") if bias_name.endswith(".attention_bias") else softmax.name
        return AttentionMatch(name=f"{module}.{attention_plugin_identity().name}", inputs=(*inputs, bias_name),
                              output=str(merge.output[0]),
                              num_heads=heads, key_dim=key_dim, val_dim=val_dim, scale=float(scale.reshape(-1)[0]),
                              replaced=frozenset(self.visited))

    def _constant_operand(self, node: onnx.NodeProto, what: str) -> tuple[str, str]:
        """(constant input, other input) of a binary node with one constant operand, either side."""
        first, second = node.input
        if self.index.constant(second) is not None:
            return second, first
        if self.index.constant(first) is not None:
            return first, second
        raise self.fail(f"{node.op_type} node {node.name!r} has no constant {what} operand")

    def _source(self, split: onnx.NodeProto) -> str:
        """The projection output that the Split's Reshape reads (the plugin's qkv or kv input)."""
        return str(self.index.graph.node[self.index.producer[split.input[0]]].input[0])

    def _check_enclosed(self, output: str) -> None:
        """Every tensor the replaced nodes make, but the final output, is read by replaced nodes only."""
        for index in sorted(self.visited):
            node = self.index.graph.node[index]
            for tensor in node.output:
                if tensor == output:
                    continue
                readers = set(self.index.consumers.get(tensor, []))
                if tensor in self.index.outputs or not readers <= self.visited:
                    raise self.fail(f"{tensor!r} (made by {node.op_type} node {node.name!r}) is also read outside "
                                    "the attention subgraph")


def _attention_plugin_node(match: AttentionMatch) -> onnx.NodeProto:
    identity = attention_plugin_identity()  # the header the C++ plugin compiles, so the two cannot disagree
    return helper.make_node(
        identity.name, inputs=list(match.inputs), outputs=[match.output], name=match.name, domain=PLUGIN_DOMAIN,
        plugin_version=identity.version, plugin_namespace=identity.namespace,
        num_heads=match.num_heads, key_dim=match.key_dim, val_dim=match.val_dim, scale=match.scale,
    )


def match_attention(model: onnx.ModelProto) -> list[AttentionMatch]:
    """Every attention subgraph of the main graph, one per Softmax; AttentionPatternError for any other Softmax."""
    for node_list in _node_lists(model):
        if not node_list.is_main_graph and any(n.op_type == "Softmax" for n in node_list.nodes):
            raise AttentionPatternError(f"a Softmax in {node_list.where} cannot be replaced: the attention rewrite "
                                        "handles the main graph only")
    index = _GraphIndex(model.graph)
    onnx_opset = _opset_version(model.opset_import, onnx.defs.onnx_opset_version())
    matches = [_AttentionWalker(index, position).match(onnx_opset) for position, node in enumerate(model.graph.node)
               if node.op_type == "Softmax" and node.domain in _ONNX_DOMAINS]
    claimed: dict[int, str] = {}
    for match in matches:
        for position in match.replaced:
            if position in claimed:
                raise AttentionPatternError(f"node {model.graph.node[position].name!r} lies in two attention "
                                            f"subgraphs ({claimed[position]} and {match.name})")
            claimed[position] = match.name
    return matches


def replace_attention_with_plugin(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace every LeViT attention subgraph of `model` (in place) with one LevitAttention node; return both.

    The subgraph runs from the qkv (or kv and q) projection outputs through the head reshapes, split and
    transposes, the two MatMuls, the scale Mul, the bias Add and the Softmax to the Reshape whose output
    `proj` reads. Every Softmax is matched before anything changes: one that is not provably in such a
    subgraph raises AttentionPatternError naming it, and the model is left as it was. Constants only the
    replaced nodes used are removed; the plugin outputs keep their inferred types (as value_info).
    """
    matches = match_attention(model)
    if not matches:
        return model, 0
    types = _value_types(model)
    graph = model.graph
    replaced = set().union(*(m.replaced for m in matches))
    plugin_at = {max(m.replaced): m for m in matches}  # the final Reshape comes last: its inputs exist by then
    kept: list[onnx.NodeProto] = []
    for position, node in enumerate(graph.node):
        if position in plugin_at:
            kept.append(_attention_plugin_node(plugin_at[position]))
        elif position not in replaced:
            kept.append(node)
    read_by_replaced = {name for position in replaced for name in graph.node[position].input}
    still_read = {name for node in kept for name in node.input} | {value.name for value in graph.output}
    orphaned = read_by_replaced - still_read  # constants (shapes, split sizes, scales) only the replaced nodes read
    kept = [n for n in kept if not (n.op_type == "Constant" and set(n.output) <= orphaned)]
    unused = [tensor for tensor in graph.initializer if tensor.name in orphaned]
    del graph.node[:]
    graph.node.extend(kept)
    for tensor in unused:
        graph.initializer.remove(tensor)
    known = {value.name for value in (*graph.input, *graph.output, *graph.value_info)}
    for match in matches:
        if match.output not in known and match.output in types:
            graph.value_info.append(helper.make_value_info(match.output, types[match.output]))
    _import_plugin_domain(model.opset_import)
    return model, len(matches)
