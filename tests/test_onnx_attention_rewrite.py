"""replace_attention_with_plugin on the project's own LeViT exports (CPU only).

The rewrite is checked against the model it came from (one plugin node per PreparedAttention, with
that layer's heads, widths, scale and bias) and, through ONNX Runtime, against the original graph:
the contract's reference computation on the plugin node's inputs must give the original attention
output, so the node reads the right tensors in the right layout.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from levit_trt.export import ExportOptions, export_onnx
from levit_trt.models import PreparedAttention, load_model, set_attention
from levit_trt.onnx_rewrites import (
    PLUGIN_DOMAIN,
    AttentionPatternError,
    replace_attention_with_plugin,
)
from levit_trt.variants import resolve_variant
from levit_trt.weights import parse_weights, synthetic_images

# The node the contract fixes (the rewrite reads it from plugins' identity header; this is the contract's own text).
ATTENTION_PLUGIN_OP = "LevitAttention"
# Both precisions and both attention kinds are in each; 384 has other head counts and widths than 128S.
CASES = [("128S", "fp32"), ("384", "fp16")]


class Exports(dict):
    """(variant, precision) -> (plain export, the prepared attention layers it came from), exported on first use."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def __missing__(self, key: tuple[str, str]) -> tuple[Path, list[PreparedAttention]]:
        variant_name, precision = key
        model = load_model(resolve_variant(variant_name), parse_weights("random"))
        path = self.directory / f"{variant_name}-{precision}.onnx"
        export_onnx(copy.deepcopy(model), path, ExportOptions(precision=precision))  # type: ignore[arg-type]
        self[key] = (path, [m for m in model.modules() if isinstance(m, PreparedAttention)])
        return self[key]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp("exports"))


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == ATTENTION_PLUGIN_OP]


@pytest.mark.parametrize("export_case", CASES, ids=["-".join(c) for c in CASES])
def test_one_plugin_node_per_attention_layer(exported, export_case) -> None:
    path, layers = exported[export_case]
    model, replaced = replace_attention_with_plugin(onnx.load(str(path)))
    nodes = plugin_nodes(model)
    assert replaced == len(layers) == len(nodes) == {"128S": 11, "384": 14}[export_case[0]]
    assert not [n for n in model.graph.node if n.op_type in ("Softmax", "Split")]
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dtype = np.float16 if export_case[1] == "fp16" else np.float32
    for node, layer in zip(nodes, layers, strict=True):  # export keeps module order
        assert node.domain == PLUGIN_DOMAIN
        found = attributes(node)
        assert (found["num_heads"], found["key_dim"], found["val_dim"]) == (layer.num_heads, layer.key_dim,
                                                                            layer.val_dim)
        assert found["plugin_version"] == b"1" and found["plugin_namespace"] == b"levit_trt"
        # The scale is the graph's constant, rounded to the export's type (fp16: 0.17677 -> 0.17676).
        assert found["scale"] == pytest.approx(float(dtype(layer.scale)), rel=1e-7)
        assert len(node.input) == (3 if layer.downsample else 2)
        bias = initializers[node.input[-1]]
        np.testing.assert_array_equal(bias, layer.attention_bias.numpy().astype(dtype))
    onnx.checker.check_model(model)
    outputs = {v.name for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert {n.output[0] for n in nodes} <= outputs  # plugin outputs keep their types for what follows


def contract_reference(node: onnx.NodeProto, values: dict[str, np.ndarray], bias: np.ndarray) -> np.ndarray:
    """The contract's LevitAttention, in float64, from the node's inputs and attributes."""
    found = attributes(node)
    heads, key_dim, val_dim, scale = found["num_heads"], found["key_dim"], found["val_dim"], found["scale"]
    first = values[node.input[0]].astype(np.float64)
    batch, keys, _ = first.shape
    rows = first.reshape(batch, keys, heads, -1)
    if len(node.input) == 2:
        q, k, v = rows[..., :key_dim], rows[..., key_dim:2 * key_dim], rows[..., 2 * key_dim:]
    else:
        k, v = rows[..., :key_dim], rows[..., key_dim:]
        q = values[node.input[1]].astype(np.float64).reshape(batch, -1, heads, key_dim)
    assert v.shape[-1] == val_dim
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * scale + bias.astype(np.float64)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, q.shape[1], heads * val_dim)


@pytest.mark.parametrize("export_case", CASES, ids=["-".join(c) for c in CASES])
def test_plugin_inputs_reproduce_the_original_attention_outputs(exported, export_case) -> None:
    ort = pytest.importorskip("onnxruntime")
    path, _ = exported[export_case]
    original = onnx.load(str(path))
    nodes = plugin_nodes(replace_attention_with_plugin(copy.deepcopy(original))[0])
    wanted = sorted({name for n in nodes for name in (*n.input[:-1], n.output[0])})
    inferred = onnx.shape_inference.infer_shapes(original)
    types = {v.name: v.type for v in inferred.graph.value_info}
    original.graph.output.extend(helper.make_value_info(name, types[name]) for name in wanted)
    session = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    images = synthetic_images(2, seed=71).numpy().astype(np.float16 if export_case[1] == "fp16" else np.float32)
    values = dict(zip(["logits", *wanted], session.run(["logits", *wanted], {"input": images}), strict=True))
    initializers = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    for node in nodes:
        expected = values[node.output[0]].astype(np.float64)
        got = contract_reference(node, values, initializers[node.input[-1]])
        error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        # fp32: ONNX Runtime's fp32 against float64 of the same inputs, measured <= 2.9e-7. fp16: ONNX
        # Runtime rounds scores, weights and output to fp16 (2^-11 each), measured <= 2.1e-4. A wrong
        # input, head split, or scale is off by > 1e-1.
        assert error < (5e-6 if export_case[1] == "fp32" else 2e-3), f"{node.name}: relative error {error:.2e}"


def _mutated(exported, mutate) -> onnx.ModelProto:
    model = onnx.load(str(exported["128S", "fp32"][0]))
    mutate(model)
    return model


def _k_transpose_of_third_attention(model: onnx.ModelProto) -> None:
    node = [n for n in model.graph.node if n.op_type == "Transpose" and list(attributes(n)["perm"]) == [0, 2, 3, 1]][2]
    node.attribute[0].CopyFrom(helper.make_attribute("perm", [0, 2, 1, 3]))


def _scores_also_read_outside(model: onnx.ModelProto) -> None:
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"][1]
    model.graph.node.append(helper.make_node("Identity", [softmax.input[0]], ["leak"], name="leak"))
    model.graph.output.append(helper.make_tensor_value_info("leak", onnx.TensorProto.FLOAT, None))


def _scale_from_a_graph_input(model: onnx.ModelProto) -> None:
    mul = next(n for n in model.graph.node if n.op_type == "Mul")
    mul.input[1] = "runtime_scale"
    model.graph.input.append(helper.make_tensor_value_info("runtime_scale", onnx.TensorProto.FLOAT, []))


@pytest.mark.parametrize(("mutate", "softmax_index", "message"), [
    (_k_transpose_of_third_attention, 2, r"perm \[0, 2, 1, 3\], expected \[0, 2, 3, 1\]"),
    (_scores_also_read_outside, 1, "also read outside the attention subgraph"),
    (_scale_from_a_graph_input, 0, "no constant scale operand"),
], ids=["k-not-transposed", "scores-read-outside", "scale-not-constant"])
def test_anything_else_is_refused_naming_the_softmax(exported, mutate, softmax_index, message) -> None:
    model = _mutated(exported, mutate)
    before = model.SerializeToString()
    name = [n for n in model.graph.node if n.op_type == "Softmax"][softmax_index].name
    with pytest.raises(AttentionPatternError, match=rf"Softmax node '{name}'.*{message}"):
        replace_attention_with_plugin(model)
    assert model.SerializeToString() == before


def test_graph_without_softmax_is_unchanged() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    assert replace_attention_with_plugin(model) == (model, 0)


def test_export_options_and_forms() -> None:
    with pytest.raises(ValueError, match="softmax plugin or the attention plugin, not both"):
        ExportOptions(softmax_plugin=True, attention_plugin=True)
    model = set_attention(load_model(resolve_variant("128S"), parse_weights("random")), "sdpa")
    with pytest.raises(ValueError, match=r"exports the explicit attention form, but the model uses \['sdpa'\]"):
        export_onnx(model, Path("/nonexistent/model.onnx"), ExportOptions())
