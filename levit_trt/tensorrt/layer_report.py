"""Reading TensorRT's per-layer engine information: which precision each layer runs in, which ONNX nodes it came from.

Pure Python on the JSON of `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`
(built with ProfilingVerbosity.DETAILED), so it is tested on a CPU machine. With DETAILED
verbosity each entry of "Layers" is an object with "Name", "LayerType", "Inputs"/"Outputs" (each
with a "Format/Datatype" string such as "Row major linear FP32" or "Channel major FP16 format where
channel % 8 == 0"), "TacticName" and "Metadata"; the ONNX parser writes "[ONNX Layer: <node>]"
into Metadata, one per fused node, separated by \\x1f or \\x1e. With less verbosity, entries are
bare layer-name strings, which summarise as "unknown".

The same "[ONNX Layer: <node>]" string is the metadata of each network layer before the build
(onnx-tensorrt's importerUtils.cpp `processMetadata`, which appends " | Local Function: <f>" inside
the brackets for nodes of ONNX local functions, and names an unnamed node "node_of_<its first
output>"), which is how the TensorRT 10 calibrator path finds the layers a policy keeps float.

Where no engine can be deserialized (TensorRT-RTX on a machine without a supported GPU), the same
per-layer facts come from the builder's DETAILED log instead (`layers_from_build_log`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from levit_trt.precision_policy import QDQ_OP_TYPES

if TYPE_CHECKING:
    import onnx

LAYERS_FILENAME = "layers.json"
REPORT_KEY = "levit_trt"  # our build provenance, added beside TensorRT's "Layers" and "Bindings"

# Datatype words TensorRT prints in "Format/Datatype", in order from the least to the most precise:
# a layer runs in the least precise float/int8 type among its inputs and outputs.
_DATATYPE_WORDS = {
    "FP4": "fp4", "Int4": "int4", "Int8": "int8", "FP8": "fp8", "FP16": "fp16", "Half": "fp16",
    "BF16": "bf16", "FP32": "fp32", "Float": "fp32",
}
_PRECISION_ORDER = ("int4", "fp4", "int8", "fp8", "fp16", "bf16", "fp32")
_INDEX_WORDS = ("Int32", "Int64", "Bool", "UInt8")  # shape/index tensors: not a compute precision
_DATATYPE_PATTERN = re.compile(r"\b(" + "|".join(list(_DATATYPE_WORDS) + list(_INDEX_WORDS)) + r")\b")
_ONNX_NODE_PATTERN = re.compile(r"\[ONNX Layer: ([^\]]*)\]")
_LOCAL_FUNCTION_SUFFIX = " | "  # the parser's separator before " | Local Function: <name>"
# One line per layer in the builder's DETAILED log (TensorRT-RTX 1.7.1), after a "Layers:" line:
# "Name: <n>, LayerType: <t>, Inputs: [ { ..., Datatype: Half, ... }], Constants: [...], Outputs: [...],
#  TacticName: <t>, StreamId: 0, Metadata: [ONNX Layer: <node>]\x1f[ONNX Layer: ...]". Constants (weights)
# are left out of the precision as the inspector's JSON leaves them out of Inputs.
_LOG_LAYER_PATTERN = re.compile(
    r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: \[(?P<inputs>.*?)\], Constants: \[.*?\], "
    r"Outputs: \[(?P<outputs>.*?)\], TacticName: (?P<tactic>[^,]*),.*?Metadata: (?P<metadata>.*)$")
_LOG_DATATYPE_PATTERN = re.compile(r"Datatype: (\w+)")
_MATMUL_OP_TYPES = ("MatMul", "Gemm")
# LayerType words of a GEMM layer: "gemm" is what TensorRT-RTX 1.7.1 logs for one (measured); MatrixMultiply is the
# network layer type TensorRT gives an ONNX MatMul.
_GEMM_LAYER_WORDS = ("gemm", "matrixmultiply")
REFORMAT = "reformat"
UNKNOWN = "unknown"
INDEX = "index"


def tensor_precision(format_datatype: str) -> str | None:
    """'fp32', 'fp16', 'int8', ... from a "Format/Datatype" string; 'index' for int32/int64/bool."""
    match = _DATATYPE_PATTERN.search(format_datatype)
    if match is None:
        return None
    word = match.group(1)
    return _DATATYPE_WORDS.get(word, INDEX)


def layer_precision(layer: Mapping[str, Any] | str) -> str:
    """The precision a layer runs in: the least precise float/int8 type among its I/O tensors.

    Reformat layers (TensorRT's own layout/precision conversions) count as 'reformat', so an INT8
    engine's real float fallbacks are not hidden among conversions; layers whose tensors are all
    shape/index tensors count as 'index'; entries without tensor information as 'unknown'.
    """
    if isinstance(layer, str):
        return UNKNOWN
    if str(layer.get("LayerType", "")).lower() == REFORMAT:
        return REFORMAT
    found = {tensor_precision(str(t.get("Format/Datatype", "")))
             for key in ("Inputs", "Outputs") for t in layer.get(key, ()) if isinstance(t, Mapping)}
    for precision in _PRECISION_ORDER:
        if precision in found:
            return precision
    return INDEX if INDEX in found else UNKNOWN


def _parse(engine_information: str) -> Any:
    """The inspector's JSON; strict=False because it writes the metadata separators (\\x1f, \\x1e) unescaped."""
    return json.loads(engine_information, strict=False)


def _layers(layers_json: str | Mapping[str, Any]) -> list[Any]:
    data = _parse(layers_json) if isinstance(layers_json, str) else layers_json
    layers = data.get("Layers") if isinstance(data, Mapping) else None
    if isinstance(layers, list):
        return layers
    raise ValueError("not TensorRT engine information: expected a JSON object with a 'Layers' list")


def summarize_layer_precisions(layers_json: str | Mapping[str, Any]) -> dict[str, int]:
    """Precision -> number of layers, from the inspector's JSON (text or parsed), least precise first."""
    counts = Counter(layer_precision(layer) for layer in _layers(layers_json))
    order = {name: i for i, name in enumerate((*_PRECISION_ORDER, INDEX, REFORMAT, UNKNOWN))}
    return {name: counts[name] for name in sorted(counts, key=lambda n: order.get(n, len(order)))}


def layer_tactic(layer: Mapping[str, Any]) -> str | None:
    """The tactic a layer runs: its "TacticName", else its "TacticValue" (NoOp layers carry only that); None when
    it has neither."""
    for key in ("TacticName", "TacticValue"):
        value = layer.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def layers_from_build_log(message: str) -> dict[str, Any]:
    """The builder's per-layer log message as the inspector's JSON shape ("Layers": Name, LayerType,
    Inputs/Outputs with "Format/Datatype", TacticName, Metadata); ValueError when no layer line is in it."""
    layers = []
    for line in message.splitlines():
        match = _LOG_LAYER_PATTERN.match(line)
        if match is None:
            continue
        layers.append({
            "Name": match["name"], "LayerType": match["type"],
            "Inputs": [{"Format/Datatype": word} for word in _LOG_DATATYPE_PATTERN.findall(match["inputs"])],
            "Outputs": [{"Format/Datatype": word} for word in _LOG_DATATYPE_PATTERN.findall(match["outputs"])],
            "TacticName": match["tactic"], "Metadata": match["metadata"],
        })
    if not layers:
        raise ValueError("the builder's log holds no per-layer lines (was ProfilingVerbosity.DETAILED set?)")
    return {"Layers": layers, "Source": "builder log (no engine could be deserialized here)"}


def int8_layers_by_op_type(layers_json: str | Mapping[str, Any], node_op_types: Mapping[str, str]) -> dict[str, int]:
    """ONNX op type -> number of layers running in INT8 that hold a node of that type (Q/DQ nodes not counted):
    shows which ops a Q/DQ ONNX really got into INT8 (a MatMul form TensorRT keeps float shows up missing)."""
    counts: Counter[str] = Counter()
    for layer in _layers(layers_json):
        if isinstance(layer, Mapping) and layer_precision(layer) == "int8":
            op_types = {node_op_types.get(node, UNKNOWN) for node in onnx_node_names(str(layer.get("Metadata", "")))}
            counts.update(op_types - set(QDQ_OP_TYPES))
    return dict(sorted(counts.items()))


def int8_gemm_nodes(layers_json: str | Mapping[str, Any]) -> set[str]:
    """ONNX nodes held by a GEMM layer that takes INT8 inputs only: the MatMuls and Gemms that really multiply in INT8.

    Judged by the layer's type and inputs, not by `layer_precision`: where TensorRT-RTX 1.7.1 cannot fold a weight's
    scale into the GEMM (a MatMul weight scaled per K row, measured), it emits a "runtime_fusion" layer that takes
    the INT8 activation, casts it and the weight to float and multiplies in float; that layer too has an INT8 input.
    """
    held: set[str] = set()
    for layer in _layers(layers_json):
        if not isinstance(layer, Mapping) or not any(word in str(layer.get("LayerType", "")).lower()
                                                     for word in _GEMM_LAYER_WORDS):
            continue
        inputs = [tensor_precision(str(t.get("Format/Datatype", ""))) for t in layer.get("Inputs", ())
                  if isinstance(t, Mapping)]
        if inputs and all(precision == "int8" for precision in inputs):
            held.update(onnx_node_names(str(layer.get("Metadata", ""))))
    return held


def int8_gemms_by_matmul_kind(layers_json: str | Mapping[str, Any], node_op_types: Mapping[str, str],
                              weight_matmuls: Collection[str]) -> dict[str, dict[str, Any]]:
    """"MatMul/weight", "MatMul/activation", "Gemm/weight" -> how many such ONNX nodes there are, how many run in an
    INT8 GEMM (`int8_gemm_nodes`) and which do not: projections (a constant weight) apart from the attention
    products (activation x activation), which a per-op-type count of INT8 layers mixes up with their epilogues."""
    in_int8 = int8_gemm_nodes(layers_json)
    kinds: dict[str, list[str]] = {}
    for node, op_type in node_op_types.items():
        if op_type in _MATMUL_OP_TYPES:
            kinds.setdefault(f"{op_type}/{'weight' if node in weight_matmuls else 'activation'}", []).append(node)
    return {kind: {"nodes": len(nodes), "int8_gemm": sum(node in in_int8 for node in nodes),
                   "not_int8_gemm": sorted(node for node in nodes if node not in in_int8)}
            for kind, nodes in sorted(kinds.items())}


def weight_matmul_nodes(model: onnx.ModelProto) -> set[str]:
    """MatMul/Gemm nodes whose second input is a constant weight through a DequantizeLinear (a quantized weight)."""
    initializers = {init.name for init in model.graph.initializer}
    dequantized = {node.output[0] for node in model.graph.node
                   if node.op_type == "DequantizeLinear" and node.input and node.input[0] in initializers}
    return {_parser_node_name(node) for node in model.graph.node
            if node.op_type in _MATMUL_OP_TYPES and len(node.input) > 1 and node.input[1] in dequantized}


def onnx_node_names(metadata: str) -> list[str]:
    """ONNX node names the ONNX parser recorded in a layer's metadata ('[ONNX Layer: name]' entries)."""
    names = (entry.split(_LOCAL_FUNCTION_SUFFIX, 1)[0] for entry in _ONNX_NODE_PATTERN.findall(metadata or ""))
    return [name for name in names if name]


def onnx_node_op_types(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> op type for the main graph, naming unnamed nodes the way TensorRT's ONNX parser does.

    The softmax plugin's nodes count as Softmax (`onnx_rewrites.standard_op_type`), as in the policies.
    """
    from levit_trt.onnx_rewrites import standard_op_type

    return {_parser_node_name(node): standard_op_type(node) for node in model.graph.node}


def _parser_node_name(node: onnx.NodeProto) -> str:
    """The node's name as TensorRT's ONNX parser records it: an unnamed node is "node_of_<its first output>"."""
    return node.name or (f"node_of_{node.output[0]}" if node.output else "")


def layers_kept_float(
    layer_nodes: Sequence[Iterable[str]],
    node_op_types: Mapping[str, str],
    float_op_types: Collection[str],
    float_node_names: Collection[str],
) -> list[int]:
    """Indices of network layers that come from an ONNX node the precision policy keeps float.

    `layer_nodes[i]` are the ONNX node names of layer i (from its metadata); a layer is kept float
    when any of its nodes has a kept op type or is named in the policy. The TensorRT 10 calibrator
    path pins these layers to fp32, the same nodes the Q/DQ path leaves unquantized.
    """
    kept = []
    for index, nodes in enumerate(layer_nodes):
        if any(node in float_node_names or node_op_types.get(node) in float_op_types for node in nodes):
            kept.append(index)
    return kept


def layer_report(engine_information: str, provenance: Mapping[str, Any],
                 node_op_types: Mapping[str, str] | None = None,
                 weight_matmuls: Collection[str] = ()) -> dict[str, Any]:
    """The inspector's JSON plus how the engine was built, its precision summary and (given the ONNX's node op
    types and its MatMul/Gemm nodes with a quantized weight) its INT8 layers per op type and INT8 GEMMs per MatMul
    kind, for layers.json."""
    data: dict[str, Any] = _parse(engine_information)
    summary = summarize_layer_precisions(data)
    data[REPORT_KEY] = {**provenance, "precision_summary": summary}
    if node_op_types is not None:
        data[REPORT_KEY]["int8_layers_by_op_type"] = int8_layers_by_op_type(data, node_op_types)
        data[REPORT_KEY]["int8_gemms_by_matmul_kind"] = int8_gemms_by_matmul_kind(data, node_op_types, weight_matmuls)
    return data


def layer_report_path(engine_path: Path) -> Path:
    """Where the layer report of a user-named engine file lives: beside it, `<engine>.layers.json`."""
    return engine_path.with_name(f"{engine_path.name}.{LAYERS_FILENAME}")


def write_layer_report(path: Path, report: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=1, sort_keys=False))


def read_layer_report(path: Path) -> dict[str, Any]:
    """A saved layers.json; ValueError naming the file when it is not one."""
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        _layers(data)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable layer report ({error})") from error
    return data
