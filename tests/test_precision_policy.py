"""Precision policies: which nodes each keeps float, on a hand-made graph and on the exported LeViT."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from levit_trt.attention_shapes import softmax_shapes
from levit_trt.onnx_rewrites import replace_softmax_with_plugin
from levit_trt.precision_policy import (
    POLICIES,
    QUANTIZED_OP_TYPES,
    PolicyError,
    attention_bias_adds,
    quantizable_nodes,
    resolve_policy,
)
from levit_trt.variants import resolve_variant


def _const(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype=np.float32), name)


@pytest.fixture(scope="module")
def attention_graph() -> onnx.ModelProto:
    """One attention block in the shape the exporters write, the bias as a Constant node (torchscript style)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w_qkv"], ["qkv_mm"], name="qkv"),
        helper.make_node("Add", ["qkv_mm", "b_qkv"], ["q"], name="qkv_bias"),  # bias vector: epilogue
        helper.make_node("Transpose", ["q"], ["k"], perm=[0, 2, 1], name="k_t"),
        helper.make_node("MatMul", ["q", "k"], ["scores"], name="q_k"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale_mul"),  # scalar: epilogue
        helper.make_node("Constant", [], ["attn_bias"], value=_const("bias_value", (2, 4, 4)), name="bias_const"),
        helper.make_node("Add", ["scaled", "attn_bias"], ["biased"], name="bias_add"),
        helper.make_node("Softmax", ["biased"], ["attn"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["attn", "q"], ["mixed"], name="attn_v"),
        helper.make_node("HardSwish", ["mixed"], ["act"], name="act"),
        helper.make_node("Add", ["act", "x"], ["residual"], name="residual"),
        helper.make_node("Add", ["residual", "other_3d"], ["y"], name="add_3d_not_attention"),
    ]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8])],
        [_const("w_qkv", (8, 8)), _const("b_qkv", (8,)), _const("scale", ()), _const("other_3d", (1, 4, 8))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def test_quantizable_nodes_skip_bias_and_scale_epilogues(attention_graph: onnx.ModelProto) -> None:
    assert quantizable_nodes(attention_graph) == [
        "qkv", "q_k", "bias_add", "softmax", "attn_v", "act", "residual", "add_3d_not_attention"]
    assert attention_bias_adds(attention_graph) == {"bias_add"}


def test_each_policy_on_the_hand_made_graph(attention_graph: onnx.ModelProto) -> None:
    assert POLICIES["all-int8"].float_nodes(attention_graph) == set()
    assert POLICIES["activations"].float_nodes(attention_graph) == {"act"}
    assert POLICIES["default"].float_nodes(attention_graph) == {"act", "softmax", "bias_add"}
    extra = resolve_policy("all-int8", extra_op_types=["MatMul"], extra_nodes=["residual"])
    assert extra.float_nodes(attention_graph) == {"qkv", "q_k", "attn_v", "residual"}


def test_policies_see_the_plugin_softmax_as_softmax(attention_graph: onnx.ModelProto) -> None:
    """After the Softmax -> plugin rewrite, every policy keeps the same nodes float (bias Add included)."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(attention_graph)
    assert replace_softmax_with_plugin(rewritten) == 1
    assert [n.op_type for n in rewritten.graph.node if n.name == "softmax"] != ["Softmax"]
    assert attention_bias_adds(rewritten) == {"bias_add"}
    assert quantizable_nodes(rewritten) == quantizable_nodes(attention_graph)
    for name, policy in POLICIES.items():
        assert policy.float_nodes(rewritten) == policy.float_nodes(attention_graph), name


def test_default_policy_on_exported_levit(model_source) -> None:
    """Against the architecture: one attention-bias Add per attention layer, with its bias shape."""
    variant = resolve_variant("128S")
    model = onnx.load(str(model_source(variant).onnx_path()))
    kept = POLICIES["default"].float_nodes(model)
    by_name = {node.name: node for node in model.graph.node}
    op_counts = collections.Counter(by_name[name].op_type for name in kept)
    attention_layers = sum(variant.depths) + 2  # plus the two downsampling attentions
    hardswish = sum(node.op_type == "HardSwish" for node in model.graph.node)
    assert op_counts == {"HardSwish": hardswish, "Softmax": attention_layers, "Add": attention_layers}
    initializers = {init.name: tuple(init.dims) for init in model.graph.initializer}
    bias_shapes = collections.Counter(
        next(initializers[i] for i in by_name[name].input if i in initializers)
        for name in attention_bias_adds(model))
    expected: collections.Counter[tuple[int, ...]] = collections.Counter()
    stage = 0
    for _, heads, queries, keys in softmax_shapes(variant, batch=1):  # stage by stage
        if queries == keys:
            expected[(heads, queries, keys)] += variant.depths[stage]
            stage += 1
        else:
            expected[(heads, queries, keys)] += 1  # the downsampling attention opening a stage
    assert bias_shapes == expected


def test_unknown_policy_lists_valid_ones() -> None:
    with pytest.raises(PolicyError, match=r"unknown precision policy 'fp8'; valid policies: all-int8, activations, default"):
        resolve_policy("fp8")


@pytest.mark.parametrize(("op_type", "message"), [
    ("hardswish", r"'hardswish' is not an ONNX op type \(did you mean 'HardSwish'\?\)"),
    ("Transpose", r"'Transpose' is an ONNX op that is never quantized"),
    ("NotAnOp", r"'NotAnOp' is not an ONNX op type; valid op types: Conv, Gemm, MatMul"),
])
def test_unknown_op_type_lists_valid_ones(op_type: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        resolve_policy("default", extra_op_types=[op_type])


def test_unknown_node_name_suggests_close_ones(attention_graph: onnx.ModelProto) -> None:
    policy = resolve_policy("default", extra_nodes=["residul"])
    with pytest.raises(PolicyError, match=r"float node 'residul' is not in the graph \(did you mean residual"):
        policy.float_nodes(attention_graph)


def test_extras_extend_the_named_policy_and_its_manifest() -> None:
    policy = resolve_policy("default", extra_op_types=["Gemm", "Softmax"], extra_nodes=["node_a"])
    assert policy.name == "default"
    assert policy.float_op_types == ("HardSwish", "HardSigmoid", "Softmax", "Gemm")
    assert policy.manifest() == {"name": "default", "float_op_types": ["Gemm", "HardSigmoid", "HardSwish", "Softmax"],
                                 "float_node_names": ["node_a"], "float_attention_bias_add": True}
    assert resolve_policy("default") is POLICIES["default"]
    assert set(POLICIES["default"].float_op_types) <= set(QUANTIZED_OP_TYPES)
