"""TensorRT-RTX's ONNX parser and builder, run for real (no GPU needed): LeViT-128S fp32, fp16, Q/DQ INT8 and
softmax-plugin ONNX parse, build and serialize through `levit-trt build --flavor rtx`, with layer reports,
engine-cache behaviour and the bad inputs each a clear error that leaves no cache entry; the fused attention
plugin's ONNX (LeViT-128S fp32/fp16, LeViT-384 fp16) builds with one plugin layer per attention module.

Skipped with the reason where tensorrt_rtx is not installed (pip install -e ".[rtx]") or, for the plugin
cases, where the plugin libraries are not built against the TensorRT 11 headers. Running an engine needs a GPU
RTX supports: those tests are in test_tensorrt_backend.py. Builds use a small batch profile (1/2/4).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from levit_trt.attention_shapes import variant_attention_shapes
from levit_trt.backends.base import ModelSource
from levit_trt.cli import main
from levit_trt.export import ExportOptions
from levit_trt.plugins import (
    PLUGIN_DIR_ENV,
    PluginMismatchError,
    PluginNotBuiltError,
    attention_trt_plugin_library,
    check_attention_trt_plugin_library,
    check_trt_plugin_library,
    plugin_dir,
    trt_plugin_compiled_major,
    trt_plugin_library,
)
from levit_trt.tensorrt.binding import wheel_cuda_major
from levit_trt.tensorrt.builder import NetworkBuild, TensorRTBuilder
from levit_trt.tensorrt.engine_cache import (
    ENGINE_KIND,
    BuildJob,
    CachedEngine,
    ExportedOnnx,
    cached_engine,
    check_engine_flavor,
)
from levit_trt.tensorrt.layer_report import REPORT_KEY, layer_report_path, onnx_node_names, read_layer_report
from levit_trt.tensorrt.options import EngineOptions
from levit_trt.variants import Variant, resolve_variant
from levit_trt.weights import parse_weights

pytestmark = pytest.mark.tensorrt

PROFILE = ["--min-batch", "1", "--opt-batch", "2", "--max-batch", "4"]


@pytest.fixture(scope="session")
def rtx() -> None:
    from levit_trt.tensorrt.binding import TensorRTNotInstalled, tensorrt_version

    try:
        tensorrt_version("rtx")
    except TensorRTNotInstalled as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def onnx_128s(cache_dir: Path, rtx: None) -> dict[str, Path]:
    """LeViT-128S (random weights) as the four ONNX forms, exported and quantized once per cache."""
    from levit_trt.tensorrt.engine_cache import load_int8_inputs

    source = ModelSource(resolve_variant("128S"), parse_weights("random"), cache_dir)
    fp32 = source.onnx_path(ExportOptions())
    inputs = load_int8_inputs(variant=source.variant, calib_images=8)
    return {"fp32": fp32, "fp16": source.onnx_path(ExportOptions(precision="fp16")),
            "qdq": inputs.quantize(fp32, inputs.calibration, inputs.policy, cache_dir),
            "plugin": source.onnx_path(ExportOptions(softmax_plugin=True))}


@pytest.fixture(scope="module")
def rtx_plugin_dir(rtx: None, trt_plugins_built: Callable[[str], Path]) -> Iterator[Path]:
    """Where this module's builds find the plugin libraries: the checkout's build/ where both are built
    against TensorRT 11 headers (what RTX takes), else a build of the tests' own (conftest), so that CI
    builds plugin engines without a build step of its own."""
    try:
        if all(check((11,), path) for check, path in ((check_trt_plugin_library, trt_plugin_library()),
                                                      (check_attention_trt_plugin_library,
                                                       attention_trt_plugin_library()))):
            yield plugin_dir()
            return
    except (PluginNotBuiltError, PluginMismatchError):
        pass
    with pytest.MonkeyPatch.context() as patch:
        built = trt_plugins_built("11.1")
        patch.setenv(PLUGIN_DIR_ENV, str(built))
        yield built


@pytest.fixture(scope="module")
def plugin_library(rtx_plugin_dir: Path) -> Path:
    try:
        library = trt_plugin_library()
    except PluginNotBuiltError as error:
        pytest.skip(str(error))
    if trt_plugin_compiled_major(library) != 11:
        pytest.skip(f"{library} is not built against the TensorRT 11 headers, which TensorRT-RTX takes")
    return library


def build(onnx_path: Path, engine: Path, cache: Path, *extra: str) -> int:
    return main(["build", "--onnx", str(onnx_path), "--engine", str(engine), "--flavor", "rtx", "--cache-dir",
                 str(cache), *PROFILE, *extra])


def engine_entries(cache: Path) -> list[Path]:
    return sorted(path for path in (cache / ENGINE_KIND).glob("*") if path.is_dir()) if (cache / ENGINE_KIND).is_dir() else []


@pytest.mark.parametrize(("form", "precision", "expected"), [
    ("fp32", "fp32", "fp32"), ("fp16", "fp16", "fp16"), ("qdq", "int8", "int8"), ("plugin", "fp32", "fp32")])
def test_rtx_builds_each_onnx_form_with_its_layer_report(onnx_128s: dict[str, Path], tmp_path: Path, form: str,
                                                         precision: str, expected: str, request: pytest.FixtureRequest,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    if form == "plugin":
        request.getfixturevalue("plugin_library")
    engine = tmp_path / "levit.plan"
    assert build(onnx_128s[form], engine, tmp_path / "cache", "--precision", precision) == 0, capsys.readouterr().err
    assert engine.stat().st_size > 1 << 20  # weights alone are MiBs
    report = read_layer_report(layer_report_path(engine))
    ours = report[REPORT_KEY]
    assert ours["manifest"]["flavor"] == "rtx" and ours["manifest"]["tensorrt_cuda"] == wheel_cuda_major("rtx")
    summary = ours["precision_summary"]
    assert summary[expected] > 0
    # strongly typed: the ONNX alone decides; no layer in a precision the ONNX does not have
    assert not {"fp16", "int8"} - {expected} & {name for name, count in summary.items() if count}
    layers = report["Layers"]
    # most layers name the ONNX nodes they came from (RTX's own sync and layout kernels do not)
    assert sum(bool(onnx_node_names(layer["Metadata"])) for layer in layers) > len(layers) // 2
    if form == "plugin":
        assert any(layer["LayerType"] == "custom_layer" for layer in layers)
        assert [entry["library"] for entry in ours["manifest"]["plugins"]] == ["liblevit_softmax_trt.so"]
    if form == "qdq":
        by_type = ours["int8_layers_by_op_type"]
        assert by_type.get("Conv", 0) > 0 and by_type.get("MatMul", 0) > 0, by_type
        # The default policy keeps Softmax and the hard activations float: where such a node sits in an INT8 layer,
        # it is fused there with a Q/DQ node (the kernel computes it in float and quantizes at its edge); no layer
        # of kept nodes alone runs in INT8.
        op_types = {node.name: node.op_type for node in onnx.load(str(onnx_128s["qdq"])).graph.node}
        kept_types = {"Softmax", "HardSwish", "HardSigmoid"}
        int8_layer_types = [{op_types.get(node) for node in onnx_node_names(layer["Metadata"])}
                            for layer in layers if layer_precision_of(layer) == "int8"]
        assert any(types & kept_types for types in int8_layer_types)
        assert all(types & {"QuantizeLinear", "DequantizeLinear"} for types in int8_layer_types if types & kept_types)
        # Every projection (MatMul of a [B, N, K] activation and a per-channel [K, N] weight) is an INT8 GEMM; the
        # attention products (activation x activation) are counted apart from them, and are INT8 GEMMs too.
        gemms = ours["int8_gemms_by_matmul_kind"]
        projections, attention = projection_and_attention_matmuls(onnx.load(str(onnx_128s["qdq"])))
        assert gemms["MatMul/weight"] == {"nodes": len(projections), "int8_gemm": len(projections),
                                          "not_int8_gemm": []}, gemms
        assert gemms["MatMul/activation"] == {"nodes": len(attention), "int8_gemm": len(attention),
                                              "not_int8_gemm": []}, gemms
        assert projections and attention


def projection_and_attention_matmuls(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """MatMul nodes whose second input is a dequantized initializer, and those whose inputs are both dequantized
    activations, read from the graph here (not through the layer report's helper)."""
    initializers = {init.name for init in model.graph.initializer}
    dq_of = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    projections: set[str] = set()
    attention: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "MatMul" and all(name in dq_of for name in node.input):
            (attention, projections)[dq_of[node.input[1]] in initializers].add(node.name)
    return projections, attention


def with_matmul_weights_scaled_along_k(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same Q/DQ graph with each MatMul weight [K, N] requantized per K row (axis 0): the form TensorRT cannot
    fold into the GEMM's output scale."""
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        dq = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[dq.input[0]]).astype(np.float64)
        weight *= numpy_helper.to_array(initializers[dq.input[1]])[None, :]
        scale = (np.abs(weight).max(axis=1) / 127).astype(np.float32)
        quantized = np.clip(np.round(weight / scale[:, None]), -127, 127).astype(np.int8)
        names = [f"{dq.name}_k_{part}" for part in ("weight", "scale", "zero_point")]
        model.graph.initializer.extend([numpy_helper.from_array(quantized, names[0]),
                                        numpy_helper.from_array(scale, names[1]),
                                        numpy_helper.from_array(np.zeros(len(scale), np.int8), names[2])])
        dq.input[:] = names
        next(a for a in dq.attribute if a.name == "axis").i = 0
    return model


def test_matmul_weights_scaled_along_k_get_no_int8_gemm(onnx_128s: dict[str, Path], tmp_path: Path) -> None:
    """What the projection check above guards against: the per-K-row form builds, but no projection is an INT8 GEMM
    (RTX casts to float and multiplies in float), and the report says so while the attention products stay INT8."""
    path = tmp_path / "axis0.onnx"
    onnx.save(with_matmul_weights_scaled_along_k(onnx.load(str(onnx_128s["qdq"]))), str(path))
    engine = tmp_path / "axis0.plan"
    assert build(path, engine, tmp_path / "cache", "--precision", "int8") == 0
    gemms = read_layer_report(layer_report_path(engine))[REPORT_KEY]["int8_gemms_by_matmul_kind"]
    projections, attention = projection_and_attention_matmuls(onnx.load(str(path)))
    assert gemms["MatMul/weight"]["int8_gemm"] == 0 and set(gemms["MatMul/weight"]["not_int8_gemm"]) == projections
    assert gemms["MatMul/activation"]["int8_gemm"] == len(attention) > 0


def layer_precision_of(layer: dict[str, object]) -> str:
    from levit_trt.tensorrt.layer_report import layer_precision

    return layer_precision(layer)  # type: ignore[arg-type]


def test_second_build_is_a_cache_hit_and_a_changed_option_rebuilds(onnx_128s: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from levit_trt.tensorrt import build_process

    builds: list[Path] = []
    real = build_process.build_in_child

    def counted(job: BuildJob, cache: Path) -> NetworkBuild:
        builds.append(job.onnx_path)
        return real(job, cache)

    monkeypatch.setattr(build_process, "build_in_child", counted)
    cache = tmp_path / "cache"
    assert build(onnx_128s["fp16"], tmp_path / "a.plan", cache, "--precision", "fp16") == 0
    assert build(onnx_128s["fp16"], tmp_path / "b.plan", cache, "--precision", "fp16") == 0
    assert len(builds) == 1 and len(engine_entries(cache)) == 1
    assert (tmp_path / "a.plan").read_bytes() == (tmp_path / "b.plan").read_bytes()
    assert build(onnx_128s["fp16"], tmp_path / "c.plan", cache, "--precision", "fp16", "--opt-level", "1") == 0
    assert len(builds) == 2 and len(engine_entries(cache)) == 2


def test_parse_error_names_the_node(rtx: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "bad_shape"], ["logits"], name="reshape_to_nowhere")], "broken",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [helper.make_tensor("bad_shape", TensorProto.INT64, [2], [-1, -1])])  # two -1: not a valid reshape
    path = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    assert build(path, tmp_path / "x.plan", tmp_path / "cache") == 2
    error = capsys.readouterr().err
    assert "reshape_to_nowhere" in error and "broken.onnx" in error, error
    assert engine_entries(tmp_path / "cache") == [] and not (tmp_path / "x.plan").exists()


def test_corrupt_onnx_is_a_clear_error(rtx: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    assert build(path, tmp_path / "x.plan", tmp_path / "cache") == 2
    error = capsys.readouterr().err
    assert "corrupt.onnx" in error, error
    assert engine_entries(tmp_path / "cache") == [] and not (tmp_path / "x.plan").exists()


def test_flavor_rtx_without_tensorrt_rtx_says_what_to_install(onnx_128s: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # `import tensorrt_rtx` now raises ImportError
    assert build(onnx_128s["fp32"], tmp_path / "x.plan", tmp_path / "cache") == 2
    error = capsys.readouterr().err
    assert "tensorrt_rtx" in error and 'pip install -e ".[rtx]"' in error, error
    assert engine_entries(tmp_path / "cache") == [] and not (tmp_path / "x.plan").exists()


def test_plugin_onnx_without_the_plugin_library_says_how_to_build_it(onnx_128s: dict[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LEVIT_TRT_PLUGIN_DIR", str(tmp_path / "no-plugins"))
    assert build(onnx_128s["plugin"], tmp_path / "x.plan", tmp_path / "cache") == 2
    error = capsys.readouterr().err
    assert "liblevit_softmax_trt.so" in error and "cmake" in error, error
    assert engine_entries(tmp_path / "cache") == []


def test_a_target_rtx_refuses_is_its_error(onnx_128s: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert build(onnx_128s["fp32"], tmp_path / "x.plan", tmp_path / "cache", "--compute-capability", "75") == 2
    error = capsys.readouterr().err
    assert "FP32 GEMM is not supported" in error, error
    assert engine_entries(tmp_path / "cache") == [] and not (tmp_path / "x.plan").exists()


def test_a_parser_abort_is_an_error_naming_the_onnx(onnx_128s: dict[str, Path], plugin_library: Path,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Without the libtensorrt_rtx.so link the parser aborts on the plugin node: the child dies, this process lives."""
    from levit_trt.tensorrt import build_process

    empty = tmp_path / "no-link"
    empty.mkdir()
    monkeypatch.setattr(build_process, "rtx_library_link_dir", lambda cache: empty)
    assert build(onnx_128s["plugin"], tmp_path / "x.plan", tmp_path / "cache") == 2
    error = capsys.readouterr().err
    assert "SIGABRT" in error and str(onnx_128s["plugin"]) in error, error[-2000:]
    assert engine_entries(tmp_path / "cache") == []


def test_an_engine_is_refused_by_a_flavor_that_did_not_build_it(onnx_128s: dict[str, Path], tmp_path: Path) -> None:
    engine = tmp_path / "rtx.plan"
    assert build(onnx_128s["fp16"], engine, tmp_path / "cache", "--precision", "fp16") == 0
    check_engine_flavor(engine, "rtx")
    with pytest.raises(ValueError, match="built by the rtx flavor .* not tensorrt; load it with --flavor rtx"):
        check_engine_flavor(engine, "tensorrt")
    from levit_trt.tensorrt.runner import EngineRunner

    with pytest.raises(ValueError, match="not tensorrt"):
        EngineRunner.load("tensorrt", engine, "cuda:0")  # refused before any GPU is needed
    # the reverse: a TensorRT engine (its manifest says so) given to RTX
    report_path = layer_report_path(engine)
    report = json.loads(report_path.read_text())
    report[REPORT_KEY]["manifest"]["flavor"] = "tensorrt"
    report_path.write_text(json.dumps(report))
    with pytest.raises(ValueError, match="built by the tensorrt flavor"):
        EngineRunner.load("rtx", engine, "cuda:0")
    report_path.unlink()
    with pytest.raises(ValueError, match="no levit_trt manifest"):
        check_engine_flavor(engine, "rtx")


# ---- The fused attention plugin (LevitAttention): the plugin backends' default ONNX ---------------------------------

ATTENTION_CASES = [("128S", "fp32"), ("128S", "fp16"), ("384", "fp16")]  # 384: other heads and widths; one export


@pytest.fixture(scope="module")
def attention_library(rtx_plugin_dir: Path) -> Path:
    try:
        library = attention_trt_plugin_library()
        check_attention_trt_plugin_library((11,), library, "TensorRT-RTX")
    except (PluginNotBuiltError, PluginMismatchError) as error:
        pytest.skip(str(error))
    return library


@pytest.fixture(scope="session")
def sources(cache_dir: Path) -> dict[str, ModelSource]:
    """One ModelSource per variant for the session; their exports are cached in the session's cache."""
    return {name: ModelSource(resolve_variant(name), parse_weights("random"), cache_dir) for name in ("128S", "384")}


def plugin_engine(source: ModelSource, precision: str, plugin: str) -> CachedEngine:
    """What the tensorrt-rtx-plugin backend builds before it needs a GPU: the plugin's ONNX, through the cache."""
    options = EngineOptions(precision=precision, flavor="rtx", min_batch=1, opt_batch=2, max_batch=4)  # type: ignore[arg-type]
    return cached_engine(TensorRTBuilder("rtx", cache_dir=source.cache_dir), ExportedOnnx(source, plugin), options,
                         source.cache_dir)


def attention_modules(variant: Variant) -> int:
    """Attention modules of a variant from its table: one per block, and the downsample attentions."""
    return sum(variant.depths) + sum(shape.downsample for shape in variant_attention_shapes(variant))


def plugin_layers(engine: CachedEngine) -> list[dict[str, Any]]:
    return [layer for layer in read_layer_report(engine.layers_path)["Layers"]
            if isinstance(layer, dict) and layer.get("LayerType") == "custom_layer"]


@pytest.mark.parametrize(("variant_name", "precision"), ATTENTION_CASES, ids=["-".join(c) for c in ATTENTION_CASES])
def test_attention_plugin_onnx_builds_with_one_plugin_layer_per_attention(
        sources: dict[str, ModelSource], attention_library: Path, variant_name: str, precision: str) -> None:
    source = sources[variant_name]
    engine = plugin_engine(source, precision, "attention")
    attentions = attention_modules(source.variant)
    assert attentions == {"128S": 11, "384": 14}[variant_name]
    parsed = onnx.load(read_layer_report(engine.layers_path)[REPORT_KEY]["onnx"])
    nodes = [node.name for node in parsed.graph.node if node.op_type == "LevitAttention"]
    assert len(nodes) == attentions and not [node for node in parsed.graph.node if node.op_type == "Softmax"]
    layers = plugin_layers(engine)
    # each plugin layer is one LevitAttention node, and each node one plugin layer
    assert sorted(name for layer in layers for name in onnx_node_names(layer["Metadata"])) == sorted(nodes)
    assert len(layers) == attentions
    assert {layer_precision_of(layer) for layer in layers} == {precision}  # strongly typed: the ONNX's type
    assert engine.plugin_libraries == (attention_library.resolve(),)  # the one library its nodes need
    assert [entry["library"] for entry in engine.manifest["plugins"]] == ["liblevit_attention_trt.so"]


def test_softmax_plugin_choice_is_another_onnx_and_engine(sources: dict[str, ModelSource], attention_library: Path,
                                                         plugin_library: Path) -> None:
    """plugin='softmax' keeps the reference's softmax-only plugin ONNX: its own engine key and library."""
    source = sources["128S"]
    fused, softmax = plugin_engine(source, "fp16", "attention"), plugin_engine(source, "fp16", "softmax")
    assert fused.key != softmax.key
    assert softmax.plugin_libraries == (plugin_library.resolve(),)
    assert [entry["library"] for entry in softmax.manifest["plugins"]] == ["liblevit_softmax_trt.so"]
    layers = plugin_layers(softmax)
    assert len(layers) == attention_modules(source.variant)  # one softmax per attention, in its own plugin layer
    assert {layer_precision_of(layer) for layer in layers} == {"fp16"}


def test_build_loads_the_attention_library_besides_given_plugins(sources: dict[str, ModelSource], attention_library: Path,
                                                                 plugin_library: Path, tmp_path: Path) -> None:
    """`levit-trt build --plugins LIB`: the given libraries, and the attention library because the ONNX uses it."""
    onnx_path = sources["128S"].onnx_path(ExportOptions(precision="fp16", attention_plugin=True))
    engine = tmp_path / "attention.plan"
    assert build(onnx_path, engine, tmp_path / "cache", "--precision", "fp16", "--plugins", str(plugin_library)) == 0
    manifest = read_layer_report(layer_report_path(engine))[REPORT_KEY]["manifest"]
    assert sorted(entry["library"] for entry in manifest["plugins"]) == ["liblevit_attention_trt.so",
                                                                         "liblevit_softmax_trt.so"]


def test_attention_plugin_onnx_without_its_library_says_how_to_build_it(rtx: None, sources: dict[str, ModelSource],
                                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = sources["128S"].onnx_path(ExportOptions(attention_plugin=True))
    monkeypatch.setenv("LEVIT_TRT_PLUGIN_DIR", str(tmp_path / "no-plugins"))
    assert build(onnx_path, tmp_path / "x.plan", tmp_path / "cache") == 2
    error = capsys.readouterr().err
    assert "liblevit_attention_trt.so" in error and "cmake -S . -B build" in error, error
    assert engine_entries(tmp_path / "cache") == [] and not (tmp_path / "x.plan").exists()
