"""Layer reports: precisions read from hand-written IEngineInspector JSON, ONNX node names, float-kept layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from levit_trt.tensorrt.layer_report import (
    REPORT_KEY,
    int8_gemms_by_matmul_kind,
    layer_precision,
    layer_report,
    layer_report_path,
    layers_kept_float,
    onnx_node_names,
    onnx_node_op_types,
    read_layer_report,
    summarize_layer_precisions,
    tensor_precision,
    weight_matmul_nodes,
    write_layer_report,
)


def tensors(*formats: str) -> list[dict[str, str]]:
    return [{"Name": f"t{i}", "Format/Datatype": f} for i, f in enumerate(formats)]


# The shape of TensorRT 10's DETAILED engine information, written out by hand: an INT8 engine with a
# conv in INT8 (FP32 bias out), a float-kept Hardswish in fp16, a softmax left in fp32, a reformat,
# a shape layer on Int64 tensors, and an entry without tensor details.
ENGINE_INFORMATION = {
    "Layers": [
        {"Name": "conv1 + bias", "LayerType": "CaskConvolution",
         "Inputs": tensors("Thirty-two wide channel vectorized row major Int8 format"),
         "Outputs": tensors("Row major linear FP32"), "TacticName": "sm90_xmma_fprop_implicit_gemm_i8i8",
         "Metadata": "[ONNX Layer: /stem/conv1/Conv]\x1f[ONNX Layer: /stem/Add]"},
        {"Name": "hardswish", "LayerType": "PointWiseV2", "Inputs": tensors("Channel major FP16 format where channel % 8 == 0"),
         "Outputs": tensors("Channel major FP16 format where channel % 8 == 0"), "TacticName": "pointwise",
         "Metadata": "[ONNX Layer: /stem/act/HardSwish]"},
        {"Name": "softmax", "LayerType": "Softmax", "Inputs": tensors("Row major linear FP32"),
         "Outputs": tensors("Row major linear FP32"), "Metadata": "[ONNX Layer: /attn/Softmax | Local Function: attn]"},
        {"Name": "Reformatting CopyNode", "LayerType": "Reformat", "Inputs": tensors("Row major linear FP32"),
         "Outputs": tensors("Row major linear Int8")},
        {"Name": "shape", "LayerType": "Shape", "Inputs": tensors("Row major linear Int64"),
         "Outputs": tensors("Row major linear Int32")},
        "layer_named_only",
    ],
    "Bindings": ["input", "logits"],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Row major linear FP32", "fp32"),
        ("Channel major FP16 format where channel % 8 == 0", "fp16"),
        ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
        ("Row major linear BF16", "bf16"),
        ("Row major linear FP8", "fp8"),
        ("Row major linear Int32", "index"),
        ("Row major linear Int64", "index"),
        ("", None),
    ],
)
def test_tensor_precision(text: str, expected: str | None) -> None:
    assert tensor_precision(text) == expected


def test_layer_precision_is_the_least_precise_compute_type() -> None:
    layers = ENGINE_INFORMATION["Layers"]
    assert [layer_precision(layer) for layer in layers] == ["int8", "fp16", "fp32", "reformat", "index", "unknown"]


def test_summary_counts_layers_per_precision_least_precise_first() -> None:
    for given in (ENGINE_INFORMATION, json.dumps(ENGINE_INFORMATION)):
        summary = summarize_layer_precisions(given)
        assert summary == {"int8": 1, "fp16": 1, "fp32": 1, "index": 1, "reformat": 1, "unknown": 1}
        assert list(summary) == ["int8", "fp16", "fp32", "index", "reformat", "unknown"]


@pytest.mark.parametrize("bad", [{"layers": []}, [], {"Layers": "conv"}])
def test_other_json_is_not_engine_information(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a JSON object with a 'Layers' list"):
        summarize_layer_precisions(bad)  # type: ignore[arg-type]


def test_onnx_node_names_from_metadata() -> None:
    assert onnx_node_names("[ONNX Layer: /stem/conv1/Conv]\x1f[ONNX Layer: /stem/Add]") == ["/stem/conv1/Conv",
                                                                                         "/stem/Add"]
    assert onnx_node_names("[ONNX Layer: a]\x1e[ONNX Layer: b]") == ["a", "b"]
    assert onnx_node_names("[ONNX Layer: /attn/Softmax | Local Function: attn]") == ["/attn/Softmax"]
    assert onnx_node_names("") == [] and onnx_node_names("[ONNX Layer: ]") == []


def test_onnx_node_op_types_name_unnamed_nodes_like_the_parser() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Softmax", ["r"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    assert onnx_node_op_types(helper.make_model(graph)) == {"relu": "Relu", "node_of_y": "Softmax"}


def test_layers_kept_float_by_op_type_or_node_name() -> None:
    layers = [onnx_node_names(layer.get("Metadata", "")) if isinstance(layer, dict) else []
              for layer in ENGINE_INFORMATION["Layers"]]
    op_types = {"/stem/conv1/Conv": "Conv", "/stem/Add": "Add", "/stem/act/HardSwish": "HardSwish",
                "/attn/Softmax": "Softmax"}
    assert layers_kept_float(layers, op_types, {"HardSwish", "Softmax"}, set()) == [1, 2]
    assert layers_kept_float(layers, op_types, set(), {"/stem/Add"}) == [0]  # one fused node is enough
    assert layers_kept_float(layers, op_types, set(), set()) == []


def test_layer_report_round_trip(tmp_path: Path) -> None:
    report = layer_report(json.dumps(ENGINE_INFORMATION), {"int8": {"int8_policy": "default"}})
    assert report["Layers"] == ENGINE_INFORMATION["Layers"]
    assert report[REPORT_KEY]["int8"] == {"int8_policy": "default"}
    assert report[REPORT_KEY]["precision_summary"]["int8"] == 1
    path = tmp_path / "layers.json"
    write_layer_report(path, report)
    assert read_layer_report(path) == report


def test_unreadable_report_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "layers.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: not a readable layer report"):
        read_layer_report(path)
    with pytest.raises(ValueError, match="not a readable layer report"):
        read_layer_report(tmp_path / "missing.json")


def test_report_of_an_engine_file_sits_beside_it() -> None:
    assert layer_report_path(Path("out/levit.engine")) == Path("out/levit.engine.layers.json")


def test_raw_control_characters_in_the_inspector_json() -> None:
    """The inspector writes the metadata separators unescaped: the strict JSON decoder would refuse them."""
    raw = json.dumps(ENGINE_INFORMATION).replace("\\u001f", "\x1f")
    assert "\x1f" in raw
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert summarize_layer_precisions(raw) == summarize_layer_precisions(ENGINE_INFORMATION)
    report = layer_report(raw, {"cache_key": "k"})
    assert onnx_node_names(report["Layers"][0]["Metadata"]) == ["/stem/conv1/Conv", "/stem/Add"]


def test_int8_gemms_by_matmul_kind_counts_only_gemms_fed_int8() -> None:
    """As TensorRT-RTX 1.7.1 logged LeViT-128S: a projection in an INT8 gemm, an attention product in one, and a
    projection whose weight is scaled along K in a runtime_fusion layer (INT8 in, multiplied in float) next to an
    epilogue that holds the first MatMul again with a float input."""
    layers = {"Layers": [
        {"LayerType": "gemm", "Inputs": tensors("Int8"), "Outputs": tensors("Float"),
         "Metadata": "[ONNX Layer: mm_proj]\x1f[ONNX Layer: w_DequantizeLinear]"},
        {"LayerType": "kgen", "Inputs": tensors("Float"), "Outputs": tensors("Int8"),
         "Metadata": "[ONNX Layer: mm_proj]\x1f[ONNX Layer: mm_proj_out_QuantizeLinear]"},
        {"LayerType": "gemm", "Inputs": tensors("Int8", "Int8"), "Outputs": tensors("Float"),
         "Metadata": "[ONNX Layer: mm_attn]"},
        {"LayerType": "runtime_fusion", "Inputs": tensors("Int8"), "Outputs": tensors("Float"),
         "Metadata": "[ONNX Layer: mm_proj_k]"},
        {"LayerType": "gemm", "Inputs": tensors("Float"), "Outputs": tensors("Float"), "Metadata": "[ONNX Layer: head]"},
    ]}
    op_types = {"mm_proj": "MatMul", "mm_attn": "MatMul", "mm_proj_k": "MatMul", "head": "Gemm",
                "w_DequantizeLinear": "DequantizeLinear"}
    assert int8_gemms_by_matmul_kind(layers, op_types, {"mm_proj", "mm_proj_k", "head"}) == {
        "Gemm/weight": {"nodes": 1, "int8_gemm": 0, "not_int8_gemm": ["head"]},
        "MatMul/activation": {"nodes": 1, "int8_gemm": 1, "not_int8_gemm": []},
        "MatMul/weight": {"nodes": 2, "int8_gemm": 1, "not_int8_gemm": ["mm_proj_k"]},
    }
    report = layer_report(json.dumps(layers), {}, op_types, {"mm_proj"})[REPORT_KEY]["int8_gemms_by_matmul_kind"]
    assert report["MatMul/weight"]["nodes"] == 1 and report["MatMul/activation"]["nodes"] == 2


def test_weight_matmul_nodes_are_those_with_a_dequantized_initializer_as_second_input() -> None:
    scale, zero = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])
    weight = helper.make_tensor("w", TensorProto.INT8, [4, 4], [1] * 16)
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s", "z"], ["w_dq"], name="w_dq"),
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["x_dq"], name="x_dq"),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="proj"),
        helper.make_node("MatMul", ["x_dq", "x_dq"], ["a"]),  # unnamed: the parser calls it node_of_a
        helper.make_node("Gemm", ["x_dq", "w_dq"], ["g"], name="gemm"),
        helper.make_node("MatMul", ["x", "w_float"], ["f"], name="float_proj"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT8, [4, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "a", "g", "f")],
                              [scale, zero, weight, helper.make_tensor("w_float", TensorProto.FLOAT, [4, 4], [0.0] * 16)])
    assert weight_matmul_nodes(helper.make_model(graph)) == {"proj", "gemm"}
