"""replace_softmax_with_plugin on small hand-built ONNX graphs (CPU only)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from levit_trt import plugins
from levit_trt.onnx_rewrites import PLUGIN_DOMAIN, replace_softmax_with_plugin


def expected_identity() -> tuple[str, str, str]:
    """The plugin's name/version/namespace read straight from the C++ header (not via levit_trt)."""
    text = (plugins.PLUGIN_IDENTITY_DIR / plugins.SOFTMAX_IDENTITY_HEADER).read_text()
    found = dict(re.findall(r'#define LEVIT_SOFTMAX_PLUGIN_(NAME|VERSION|NAMESPACE) "([^"]*)"', text))
    return found["NAME"], found["VERSION"], found["NAMESPACE"]


def softmax_model(
    axes: list[int | None],
    shape: tuple = (2, 4, 49, 49),
    opset: int = 17,
    elem_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """x -> Softmax(axis) -> Relu -> ... one Softmax per entry of `axes` (None: no axis attribute)."""
    nodes, previous = [], "x"
    for i, axis in enumerate(axes):
        attributes = {} if axis is None else {"axis": axis}
        nodes.append(helper.make_node("Softmax", [previous], [f"p{i}"], name=f"softmax_{i}", **attributes))
        nodes.append(helper.make_node("Relu", [f"p{i}"], [f"r{i}"], name=f"relu_{i}"))
        previous = f"r{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"], name="output"))
    graph = helper.make_graph(
        nodes, "softmax_graph",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def attribute_values(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("axis", [-1, 3, None], ids=["axis=-1", "axis=rank-1", "default-axis"])
def test_last_axis_softmax_becomes_plugin_node(axis):
    model = softmax_model([axis])
    assert replace_softmax_with_plugin(model) == 1

    name, version, namespace = expected_identity()
    node = model.graph.node[0]
    assert node.op_type == name and node.domain == PLUGIN_DOMAIN
    assert node.name == "softmax_0" and list(node.input) == ["x"] and list(node.output) == ["p0"]
    # The attribute names TensorRT's ONNX parser reads (onnx-tensorrt's FallbackPluginImporter),
    # plus the plugin's one field.
    assert attribute_values(node) == {"plugin_version": version.encode(), "plugin_namespace": namespace.encode(),
                                      "axis": -1}
    assert [n.op_type for n in model.graph.node[1:]] == ["Relu", "Identity"]
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), (PLUGIN_DOMAIN, 1)}


def test_rewritten_model_passes_checker_and_keeps_shapes():
    model = softmax_model([-1, 3], shape=("batch", 4, 49, 49))
    assert replace_softmax_with_plugin(model) == 2
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.output)
    }
    # The plugin outputs keep their shapes, so shapes downstream are still known.
    assert shapes["p0"] == shapes["r1"] == shapes["y"] == ["batch", 4, 49, 49]


def test_counts_every_softmax():
    model = softmax_model([-1, None, 3, -1])
    assert replace_softmax_with_plugin(model) == 4
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == 0
    assert sum(n.domain == PLUGIN_DOMAIN for n in model.graph.node) == 4


def test_model_without_softmax_is_unchanged():
    model = softmax_model([])
    before = model.SerializeToString()
    assert replace_softmax_with_plugin(model) == 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize("axis", [1, 2, -2, 0])
def test_other_axis_is_refused_and_nothing_changes(axis):
    model = softmax_model([-1, axis])  # the first node is fine, the second is not
    before = model.SerializeToString()
    with pytest.raises(ValueError, match=r"Softmax node 'softmax_1'.*not the last axis"):
        replace_softmax_with_plugin(model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize(("shape", "replaced"), [((8, 196), True), ((2, 8, 196), False)])
def test_opset_11_default_axis_is_1(shape, replaced):
    # Before opset 13, Softmax's default axis is 1 and it flattens the axes from there on: the same
    # as a last-axis softmax for rank 2 only.
    model = softmax_model([None], shape=shape, opset=11)
    if replaced:
        assert replace_softmax_with_plugin(model) == 1
    else:
        with pytest.raises(ValueError, match="axis 1 of a rank-3"):
            replace_softmax_with_plugin(model)


def test_positive_axis_with_unknown_rank_is_refused():
    node = helper.make_node("Softmax", ["x"], ["y"], name="blind", axis=2)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match=r"'blind'.*rank of its input 'x' is unknown"):
        replace_softmax_with_plugin(model)


@pytest.mark.parametrize(("elem_type", "ok"), [(TensorProto.FLOAT16, True), (TensorProto.DOUBLE, False),
                                               (TensorProto.BFLOAT16, False)])
def test_element_types(elem_type, ok):
    model = softmax_model([-1], elem_type=elem_type)
    if ok:
        assert replace_softmax_with_plugin(model) == 1
    else:
        with pytest.raises(ValueError, match="FLOAT and FLOAT16 only"):
            replace_softmax_with_plugin(model)


def test_rank_1_input_is_refused():
    with pytest.raises(ValueError, match="rank >= 2"):
        replace_softmax_with_plugin(softmax_model([-1], shape=(49,)))


def test_softmax_inside_if_branch_is_replaced():
    then_branch = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["t"], name="inner_softmax", axis=-1)], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, (2, 16))],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="inner_identity")], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, (2, 16))],
    )
    condition = helper.make_tensor("cond", TensorProto.BOOL, (), [True])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 16))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 16))], initializer=[condition],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert replace_softmax_with_plugin(model) == 1
    inner = model.graph.node[0].attribute
    then_graph = next(a.g for a in inner if a.name == "then_branch")
    assert then_graph.node[0].op_type == expected_identity()[0]
    onnx.checker.check_model(model)


def test_original_graph_computes_last_axis_softmax():
    # Independent check of what the rewrite assumes: the graphs built here compute a softmax over
    # the last axis (ONNX's reference evaluator against numpy), before they are rewritten.
    from onnx.reference import ReferenceEvaluator

    model = softmax_model([3])
    x = np.random.default_rng().standard_normal((2, 4, 49, 49)).astype(np.float32)
    (y,) = ReferenceEvaluator(model).run(None, {"x": x})
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(y, np.maximum(shifted / shifted.sum(axis=-1, keepdims=True), 0), rtol=1e-5)
