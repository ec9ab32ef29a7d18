"""The engine cache and build orchestration on CPU, with a fake TensorRT builder.

A cached engine is reused only when every manifest field matches; a failing build leaves no entry;
the right ONNX is parsed for each plan; INT8 sources, calibration caches and float-kept layers
reach the builder. The calibration, policy and quantizer objects are small fakes with the
interfaces of levit_trt.calibration / precision_policy / quantize.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from levit_trt import plugins
from levit_trt.cache import MANIFEST_NAME, cache_key
from levit_trt.cli import main
from levit_trt.onnx_rewrites import PLUGIN_DOMAIN
from levit_trt.tensorrt.engine_cache import (
    CALIBRATION_KIND,
    ENGINE_KIND,
    PREQUANTIZED_POLICY,
    BuildJob,
    BuiltEngine,
    ExportedOnnx,
    GivenOnnx,
    Int8Inputs,
    cached_engine,
    calibration_batches,
    onnx_form,
    onnx_input_shape,
    with_softmax_plugin,
    write_engine_file,
)
from levit_trt.tensorrt.layer_report import REPORT_KEY, layer_report_path, read_layer_report
from levit_trt.tensorrt.options import EngineOptions, Flavor, GpuIdentity
from levit_trt.weights import file_sha256

SAMPLE_SHAPE = (3, 4, 4)


def write_onnx(path: Path, *, elem_type: int = TensorProto.FLOAT, qdq: bool = False, scale: float = 1.0) -> Path:
    """A tiny LeViT-shaped graph: input [N, 3, 4, 4] -> (Q/DQ) -> Mul(scale) -> HardSwish -> Softmax -> Flatten."""
    nodes = []
    first = "input"
    initializers = [numpy_helper.from_array(torch.tensor(scale).to(
        torch.float16 if elem_type == TensorProto.FLOAT16 else torch.float32).numpy(), "scale")]
    if qdq:
        initializers += [numpy_helper.from_array(torch.tensor(0.05).numpy(), "q_scale"),
                         numpy_helper.from_array(torch.tensor(0, dtype=torch.int8).numpy(), "q_zero")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "q_scale", "q_zero"], ["q"], name="quant"),
                  helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["dq"], name="dequant")]
        first = "dq"
    nodes += [helper.make_node("Mul", [first, "scale"], ["scaled"], name="mul"),
              helper.make_node("HardSwish", ["scaled"], ["act"], name="act"),
              helper.make_node("Softmax", ["act"], ["probs"], name="softmax", axis=-1),
              helper.make_node("Flatten", ["probs"], ["logits"], name="flatten")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", elem_type, ["batch", *SAMPLE_SHAPE])],
        [helper.make_tensor_value_info("logits", elem_type, ["batch", 48])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


ENGINE_INFORMATION = json.dumps({"Layers": [
    {"Name": "mul + hardswish", "LayerType": "PointWiseV2", "Inputs": [{"Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Format/Datatype": "Row major linear FP32"}], "Metadata": "[ONNX Layer: mul]\x1f[ONNX Layer: act]"},
    {"Name": "softmax", "LayerType": "Softmax", "Inputs": [{"Format/Datatype": "Row major linear FP16"}],
     "Outputs": [{"Format/Datatype": "Row major linear FP16"}], "Metadata": "[ONNX Layer: softmax]"},
], "Bindings": ["input", "logits"]})
# What the fake builder sees as the parsed network's layers (their ONNX nodes), for the float constraints.
NETWORK_LAYER_NODES = [["mul"], ["act"], ["softmax"], ["flatten"]]


@dataclass
class FakeBuilder:
    """An EngineBuilder that records each job; its 'engine' names the ONNX it was parsed from."""

    tensorrt_version: str = "10.13.0.35"
    flavor: Flavor = "tensorrt"
    cuda_major: str | None = "12"
    gpu: GpuIdentity | None = field(default_factory=lambda: GpuIdentity("Fake GPU", "8.9"))
    fail: bool = False
    jobs: list[BuildJob] = field(default_factory=list)
    float_layers: list[list[int]] = field(default_factory=list)

    def build(self, job: BuildJob) -> BuiltEngine:
        self.jobs.append(job)
        if self.fail:
            raise RuntimeError("TensorRT could not build the engine")
        calibration_cache = None
        if job.calibration is not None:
            self.float_layers.append(job.calibration.layers_kept_float(NETWORK_LAYER_NODES))
            if job.calibration.cache is None:
                seen = sum(len(batch) for batch in job.calibration.batches())
                calibration_cache = f"calibrated on {seen} images".encode()
        return BuiltEngine(f"engine from {file_sha256(job.onnx_path)}".encode(), ENGINE_INFORMATION, calibration_cache)


@dataclass(frozen=True)
class FakeCalibration:
    """levit_trt.calibration.CalibrationSet's interface: 10 images, batches of any size, last one partial."""

    identity: str = "calib-a"
    num_images: int = 10
    sample_shape: tuple[int, ...] = SAMPLE_SHAPE

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.num_images, batch_size):
            yield torch.randn(min(batch_size, self.num_images - start), *self.sample_shape)


@dataclass(frozen=True)
class FakePolicy:
    """levit_trt.precision_policy.PrecisionPolicy's interface."""

    name: str = "default"
    float_op_types: tuple[str, ...] = ("HardSwish", "Softmax")
    float_node_names: tuple[str, ...] = ()
    float_attention_bias_add: bool = False

    def float_nodes(self, model: onnx.ModelProto) -> set[str]:
        return {n.name for n in model.graph.node if n.op_type in self.float_op_types or n.name in self.float_node_names}

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "float_op_types": sorted(self.float_op_types),
                "float_node_names": sorted(self.float_node_names),
                "float_attention_bias_add": self.float_attention_bias_add}


@dataclass
class FakeQuantizer:
    """levit_trt.quantize.cached_qdq_onnx's interface: writes a Q/DQ ONNX whose content depends on its inputs."""

    calls: list[Path] = field(default_factory=list)

    def __call__(self, fp32_onnx: Path, calibration: Any, policy: Any, cache_dir: Path) -> Path:
        self.calls.append(fp32_onnx)
        out = cache_dir / "fake-qdq" / f"{file_sha256(fp32_onnx)[:12]}-{calibration.identity}-{policy.name}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        digest = file_sha256(fp32_onnx) + calibration.identity + policy.name
        return write_onnx(out, qdq=True, scale=sum(map(ord, digest)) / 1000)


@pytest.fixture
def onnx_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "fp32": write_onnx(tmp_path / "fp32.onnx"),
        "fp16": write_onnx(tmp_path / "fp16.onnx", elem_type=TensorProto.FLOAT16),
        "qdq": write_onnx(tmp_path / "qdq.onnx", qdq=True),
    }


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def entries(cache: Path, kind: str = ENGINE_KIND) -> list[str]:
    """Names under a cache kind, lock files left out (they are harmless and reused)."""
    root = cache / kind
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.is_dir() else []


def int8_loader(calibration: FakeCalibration | None = None, policy: Any = None,
                quantizer: FakeQuantizer | None = None, calls: list[int] | None = None) -> Any:
    def load() -> Int8Inputs:
        if calls is not None:
            calls.append(1)
        return Int8Inputs(calibration or FakeCalibration(), policy or FakePolicy(),  # type: ignore[arg-type]
                          quantizer or FakeQuantizer())

    return load


# --- the cache ---------------------------------------------------------------------------------------------

def test_second_request_is_a_cache_hit(onnx_files: dict[str, Path], cache: Path) -> None:
    builder = FakeBuilder()
    first = cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), EngineOptions(), cache)
    second = cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), EngineOptions(), cache)
    assert len(builder.jobs) == 1 and first == second
    assert first.engine_path.read_bytes() == f"engine from {file_sha256(onnx_files['fp32'])}".encode()
    assert json.loads((first.directory / MANIFEST_NAME).read_text()) == json.loads(json.dumps(first.manifest))
    assert first.key == cache_key(first.manifest) and entries(cache) == [first.key]
    report = read_layer_report(first.layers_path)
    assert report[REPORT_KEY]["cache_key"] == first.key and report[REPORT_KEY]["int8"] is None
    assert first.precision_summary() == {"fp16": 1, "fp32": 1}
    job = builder.jobs[0]
    assert job.onnx_path == onnx_files["fp32"] and job.plugin_libraries == () and job.calibration is None


def rewrite(path: Path) -> None:
    write_onnx(path, scale=2.0)


# Each change of one manifest field, applied to (builder, options, the ONNX file, the plugin library, the INT8 loader).
FIELD_CHANGES = {
    "tensorrt-version": lambda s: dataclasses.replace(s, builder=FakeBuilder(tensorrt_version="10.14.1.48")),
    "gpu-name": lambda s: dataclasses.replace(s, builder=FakeBuilder(gpu=GpuIdentity("Other GPU", "8.9"))),
    "compute-capability": lambda s: dataclasses.replace(s, builder=FakeBuilder(gpu=GpuIdentity("Fake GPU", "9.0"))),
    "onnx-content": lambda s: (rewrite(s.onnx), s)[1],
    "option": lambda s: dataclasses.replace(s, options=dataclasses.replace(s.options, opt_level=5)),
    "plugin-library": lambda s: (s.plugin.write_bytes(b"rebuilt plugin"), s)[1],
    "int8-policy": lambda s: dataclasses.replace(s, int8=int8_loader(policy=FakePolicy(name="all-int8",
                                                                                            float_op_types=()))),
    "int8-calibration": lambda s: dataclasses.replace(s, int8=int8_loader(FakeCalibration(identity="calib-b"))),
}


@dataclass(frozen=True)
class Setup:
    builder: FakeBuilder
    options: EngineOptions
    onnx: Path
    plugin: Path
    int8: Any

    def engine(self, cache: Path) -> Any:
        return cached_engine(self.builder, GivenOnnx.read(self.onnx), self.options, cache, int8=self.int8,
                             plugin_libraries=[self.plugin])


@pytest.mark.parametrize("change", sorted(FIELD_CHANGES))
def test_any_changed_manifest_field_rebuilds(change: str, onnx_files: dict[str, Path], cache: Path,
                                            tmp_path: Path) -> None:
    plugin = tmp_path / "libextra_plugins.so"
    plugin.write_bytes(b"plugin")
    setup = Setup(FakeBuilder(), EngineOptions(precision="int8"), onnx_files["fp32"], plugin, int8_loader())
    before = setup.engine(cache)
    assert setup.engine(cache) == before and len(setup.builder.jobs) == 1  # unchanged: a hit
    changed = FIELD_CHANGES[change](setup)
    after = changed.engine(cache)
    assert after.key != before.key and entries(cache) == sorted([before.key, after.key])
    assert len(changed.builder.jobs) == (1 if changed.builder is not setup.builder else 2)


def test_timing_cache_location_does_not_rebuild(onnx_files: dict[str, Path], cache: Path) -> None:
    builder = FakeBuilder()
    first = cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), EngineOptions(timing_cache=Path("a")), cache)
    second = cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), EngineOptions(timing_cache=Path("b")), cache)
    assert first.key == second.key and len(builder.jobs) == 1
    assert builder.jobs[0].options.timing_cache == Path("a")  # the builder still gets the file to use


def test_failed_build_leaves_no_entry_and_a_retry_builds(onnx_files: dict[str, Path], cache: Path) -> None:
    with pytest.raises(RuntimeError, match="could not build"):
        cached_engine(FakeBuilder(fail=True), GivenOnnx.read(onnx_files["fp32"]), EngineOptions(), cache)
    assert entries(cache) == []
    engine = cached_engine(FakeBuilder(), GivenOnnx.read(onnx_files["fp32"]), EngineOptions(), cache)
    assert engine.engine_path.is_file() and entries(cache) == [engine.key]


# --- which ONNX is parsed ----------------------------------------------------------------------------------

def test_onnx_form_and_input_shape(onnx_files: dict[str, Path]) -> None:
    for form, path in onnx_files.items():
        model = onnx.load(str(path))
        assert onnx_form(model) == form and onnx_input_shape(model) == SAMPLE_SHAPE


def test_external_weights_are_part_of_the_onnx_hash(tmp_path: Path, cache: Path) -> None:
    model = onnx.load(str(write_onnx(tmp_path / "inline.onnx")))
    path = tmp_path / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="external.weights", size_threshold=0)
    builder = FakeBuilder()
    first = cached_engine(builder, GivenOnnx.read(path), EngineOptions(), cache)
    weights = tmp_path / "external.weights"
    weights.write_bytes(weights.read_bytes()[::-1])  # other weights, same graph file
    second = cached_engine(builder, GivenOnnx.read(path), EngineOptions(), cache)
    assert first.key != second.key and len(builder.jobs) == 2
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="keeps weights in external.weights, which is not beside it"):
        cached_engine(builder, GivenOnnx.read(path), EngineOptions(), cache)


def test_bad_onnx_files_are_clear_errors(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ONNX file .*missing.onnx does not exist"):
        GivenOnnx.read(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf" * 10)
    with pytest.raises(ValueError, match=r"garbage.onnx is not a readable ONNX model"):
        GivenOnnx.read(garbage)
    assert not cache.exists()


@pytest.mark.parametrize(
    ("major", "options", "given", "parsed", "strongly_typed"),
    [
        (10, EngineOptions(precision="fp16"), "fp32", "fp32", False),  # TensorRT 10: fp16 via the FP16 flag
        (10, EngineOptions(precision="fp16"), "fp16", "fp16", True),  # an fp16 ONNX makes it strongly typed
        (11, EngineOptions(precision="fp16"), "fp16", "fp16", True),
        (11, EngineOptions(precision="int8"), "qdq", "qdq", True),
        (10, EngineOptions(precision="int8", strongly_typed=False), "qdq", "qdq", False),
    ],
)
def test_given_onnx_matching_the_plan(major: int, options: EngineOptions, given: str, parsed: str,
                                      strongly_typed: bool, onnx_files: dict[str, Path], cache: Path) -> None:
    builder = FakeBuilder(tensorrt_version=f"{major}.1.0")
    engine = cached_engine(builder, GivenOnnx.read(onnx_files[given]), options, cache)
    (job,) = builder.jobs
    assert job.onnx_path == onnx_files[parsed] and job.plan.strongly_typed is strongly_typed
    assert engine.manifest["onnx_sha256"] == file_sha256(onnx_files[parsed])


@pytest.mark.parametrize(
    ("major", "options", "given", "message"),
    [
        (11, EngineOptions(precision="fp16"), "fp32",
         "is a fp32 ONNX, but this build parses a fp16 ONNX; export one with levit-trt export --precision fp16"),
        (10, EngineOptions(), "fp16", "is a fp16 ONNX, but this build parses a fp32 ONNX"),
        (10, EngineOptions(), "qdq", "is a qdq ONNX, but this build parses a fp32 ONNX"),
        (11, EngineOptions(precision="int8"), "fp16", "is a fp16 ONNX, but this build parses a qdq ONNX"),
    ],
)
def test_given_onnx_of_the_wrong_form(major: int, options: EngineOptions, given: str, message: str,
                                      onnx_files: dict[str, Path], cache: Path) -> None:
    builder = FakeBuilder(tensorrt_version=f"{major}.0.0")
    with pytest.raises(ValueError, match=message):
        cached_engine(builder, GivenOnnx.read(onnx_files[given]), options, cache, int8=int8_loader())
    assert builder.jobs == [] and entries(cache) == []


def test_precision_the_gpu_lacks_is_refused_before_building(onnx_files: dict[str, Path], cache: Path) -> None:
    builder = FakeBuilder(gpu=GpuIdentity("Old GPU", "5.0"))
    with pytest.raises(ValueError, match=r"Old GPU \(compute capability 5.0\) has no native fp16"):
        cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), EngineOptions(precision="fp16"), cache)
    assert builder.jobs == [] and entries(cache) == []


@dataclass
class FakeModelSource:
    """ModelSource.onnx_path's interface: one file per ExportOptions, recorded."""

    directory: Path
    requests: list[Any] = field(default_factory=list)

    def onnx_path(self, options: Any = None) -> Path:
        from levit_trt.export import ExportOptions

        options = options or ExportOptions()
        self.requests.append(options)
        path = self.directory / f"{options.precision}-plugin{int(options.softmax_plugin)}{int(options.attention_plugin)}.onnx"
        if not path.exists():
            write_onnx(path, elem_type=TensorProto.FLOAT16 if options.precision == "fp16" else TensorProto.FLOAT)
        return path


@pytest.mark.parametrize(("major", "precision", "form"), [(10, "fp16", "fp32"), (11, "fp16", "fp16"), (11, "fp32", "fp32")])
def test_exported_onnx_in_the_planned_form(major: int, precision: str, form: str, tmp_path: Path, cache: Path) -> None:
    source = FakeModelSource(tmp_path)
    builder = FakeBuilder(tensorrt_version=f"{major}.0.0")
    cached_engine(builder, ExportedOnnx(source), EngineOptions(precision=precision), cache)  # type: ignore[arg-type]
    assert [(o.precision, o.softmax_plugin, o.attention_plugin) for o in source.requests] == [(form, False, False)]


@pytest.fixture
def softmax_plugin_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the built softmax plugin library where levit_trt looks for it."""
    plugin_dir = tmp_path / "build"
    plugin_dir.mkdir()
    library = plugin_dir / plugins.TRT_PLUGIN_LIBRARY_NAME
    library.write_bytes(b"softmax plugin")
    monkeypatch.setenv(plugins.PLUGIN_DIR_ENV, str(plugin_dir))
    return library.resolve()


def test_exported_qdq_quantizes_the_native_export_and_adds_the_plugin(tmp_path: Path, cache: Path,
                                                                     softmax_plugin_library: Path) -> None:
    source, quantizer, builder = FakeModelSource(tmp_path), FakeQuantizer(), FakeBuilder(tensorrt_version="11.1.0")
    engine = cached_engine(builder, ExportedOnnx(source, plugin="softmax"), EngineOptions(precision="int8"),  # type: ignore[arg-type]
                           cache, int8=int8_loader(quantizer=quantizer))
    assert quantizer.calls == [tmp_path / "fp32-plugin00.onnx"]  # ONNX Runtime must be able to run it
    (job,) = builder.jobs
    parsed = onnx.load(str(job.onnx_path))
    assert onnx_form(parsed) == "qdq" and not any(n.op_type == "Softmax" for n in parsed.graph.node)
    assert [n.domain for n in parsed.graph.node if n.name == "softmax"] == [PLUGIN_DOMAIN]
    assert job.plugin_libraries == (softmax_plugin_library,)
    assert engine.manifest["plugins"] == [{"library": plugins.TRT_PLUGIN_LIBRARY_NAME,
                                           "sha256": file_sha256(softmax_plugin_library)}]


@pytest.mark.parametrize(("plugin", "softmax", "attention"), [("attention", False, True), ("softmax", True, False)])
def test_exported_onnx_of_each_plugin(plugin: str, softmax: bool, attention: bool, tmp_path: Path, cache: Path) -> None:
    source = FakeModelSource(tmp_path)
    cached_engine(FakeBuilder(tensorrt_version="11.1.0"), ExportedOnnx(source, plugin=plugin),  # type: ignore[arg-type]
                  EngineOptions(precision="fp16"), cache)
    assert [(o.precision, o.softmax_plugin, o.attention_plugin) for o in source.requests] == [("fp16", softmax, attention)]


def test_int8_qdq_with_the_attention_plugin_is_an_error_naming_the_softmax_one(tmp_path: Path, cache: Path) -> None:
    quantizer = FakeQuantizer()
    with pytest.raises(ValueError, match=r"fused attention plugin .* Q/DQ INT8 .*plugin='softmax'"):
        cached_engine(FakeBuilder(tensorrt_version="11.1.0"), ExportedOnnx(FakeModelSource(tmp_path), plugin="attention"),  # type: ignore[arg-type]
                      EngineOptions(precision="int8"), cache, int8=int8_loader(quantizer=quantizer))
    assert quantizer.calls == [] and entries(cache) == []


def test_extra_plugin_libraries_are_loaded_besides_the_softmax_plugin(onnx_files: dict[str, Path], cache: Path,
                                                                     tmp_path: Path, softmax_plugin_library: Path) -> None:
    extra = tmp_path / "libextra_plugins.so"
    extra.write_bytes(b"another plugin")
    plugin_onnx = GivenOnnx.read(with_softmax_plugin(onnx_files["fp32"], cache))
    builder = FakeBuilder()
    engine = cached_engine(builder, plugin_onnx, EngineOptions(), cache, plugin_libraries=[extra])
    assert builder.jobs[0].plugin_libraries == engine.plugin_libraries == (extra.resolve(), softmax_plugin_library)
    # The softmax plugin named explicitly (from wherever it lies) is loaded once, in the given place.
    cached_engine(builder, plugin_onnx, EngineOptions(opt_level=1), cache, plugin_libraries=[softmax_plugin_library])
    assert builder.jobs[1].plugin_libraries == (softmax_plugin_library,)
    # A graph without plugin nodes loads only what is given.
    cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), EngineOptions(), cache, plugin_libraries=[extra])
    assert builder.jobs[2].plugin_libraries == (extra.resolve(),)


def test_softmax_plugin_rewrite_is_cached(onnx_files: dict[str, Path], cache: Path) -> None:
    first = with_softmax_plugin(onnx_files["qdq"], cache)
    assert with_softmax_plugin(onnx_files["qdq"], cache) == first
    assert [n.op_type for n in onnx.load(str(first)).graph.node].count(plugins.softmax_plugin_identity().name) == 1


def test_plugin_onnx_without_a_built_library(onnx_files: dict[str, Path], cache: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.PLUGIN_DIR_ENV, str(tmp_path / "nowhere"))
    plugin_onnx = with_softmax_plugin(onnx_files["fp32"], cache)
    builder = FakeBuilder()
    with pytest.raises(plugins.PluginNotBuiltError, match="TensorRT softmax plugin library not found"):
        cached_engine(builder, GivenOnnx.read(plugin_onnx), EngineOptions(), cache)
    with pytest.raises(FileNotFoundError, match="plugin library not found: .*libmissing.so"):
        cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), EngineOptions(), cache,
                      plugin_libraries=[tmp_path / "libmissing.so"])
    assert builder.jobs == [] and entries(cache) == []


# --- INT8 ---------------------------------------------------------------------------------------------------

def test_qdq_int8_from_an_fp32_onnx(onnx_files: dict[str, Path], cache: Path) -> None:
    quantizer, builder = FakeQuantizer(), FakeBuilder()
    engine = cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), EngineOptions(precision="int8"), cache,
                           int8=int8_loader(quantizer=quantizer))
    (job,) = builder.jobs
    assert quantizer.calls == [onnx_files["fp32"]] and onnx_form(onnx.load(str(job.onnx_path))) == "qdq"
    assert job.plan.strongly_typed and job.calibration is None
    assert engine.manifest["int8"] == {"mode": "qdq", "policy": "default", "float_op_types": ["HardSwish", "Softmax"],
                                       "float_node_names": [], "float_attention_bias_add": False,
                                       "calibration": "calib-a"}
    report = read_layer_report(engine.layers_path)[REPORT_KEY]
    assert report["int8"] == {"int8_path": "qdq (explicit Q/DQ ONNX)", "int8_policy": "default",
                              "int8_calibration": "calib-a"}


def test_prequantized_onnx_needs_no_calibration(onnx_files: dict[str, Path], cache: Path) -> None:
    calls: list[int] = []
    engine = cached_engine(FakeBuilder(), GivenOnnx.read(onnx_files["qdq"]), EngineOptions(precision="int8"), cache,
                           int8=int8_loader(calls=calls))
    assert calls == [] and engine.int8 is not None and engine.int8.policy == PREQUANTIZED_POLICY
    assert engine.int8.calibration is None


def test_prequantized_onnx_reports_the_policy_its_metadata_records(onnx_files: dict[str, Path], cache: Path) -> None:
    from levit_trt.precision_policy import resolve_policy
    from levit_trt.quantize import METADATA_KEY

    policy = resolve_policy("activations", extra_nodes=["mul"])
    model = onnx.load(str(onnx_files["qdq"]))
    helper.set_model_props(model, {METADATA_KEY: json.dumps({"policy": policy.manifest(), "calibration": "calib-q"})})
    onnx.save(model, str(onnx_files["qdq"]))
    engine = cached_engine(FakeBuilder(), GivenOnnx.read(onnx_files["qdq"]), EngineOptions(precision="int8"), cache)
    assert engine.manifest["int8"] == {"mode": "qdq", "policy": "activations",
                                       "float_op_types": ["HardSigmoid", "HardSwish"], "float_node_names": ["mul"],
                                       "float_attention_bias_add": False, "calibration": "calib-q"}
    assert read_layer_report(engine.layers_path)[REPORT_KEY]["int8"]["int8_policy"] == "activations"
    helper.set_model_props(model, {METADATA_KEY: json.dumps({"policy": policy.manifest()})})
    onnx.save(model, str(onnx_files["qdq"]))
    with pytest.raises(ValueError, match=r"qdq.onnx: its levit_trt.quantization metadata lacks calibration"):
        cached_engine(FakeBuilder(), GivenOnnx.read(onnx_files["qdq"]), EngineOptions(precision="int8"), cache)


def test_int8_without_calibration_inputs_is_an_error(onnx_files: dict[str, Path], cache: Path) -> None:
    with pytest.raises(ValueError, match="needs calibration data and a precision policy"):
        cached_engine(FakeBuilder(), GivenOnnx.read(onnx_files["fp32"]), EngineOptions(precision="int8"), cache)


def test_cli_int8_from_fp32_onnx_without_calib_dir(onnx_files: dict[str, Path]) -> None:
    from levit_trt.tensorrt.engine_cache import int8_inputs_loader

    loader = int8_inputs_loader(EngineOptions(precision="int8"), variant=None)
    with pytest.raises(ValueError, match="needs calibration images: pass --calib DIR"):
        loader()


CALIBRATOR = EngineOptions(precision="int8", int8_mode="calibrator", calib_batch=4)


def test_calibrator_path_reuses_its_cache_until_model_or_data_change(onnx_files: dict[str, Path],
                                                                    cache: Path) -> None:
    builder = FakeBuilder()
    first = cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), CALIBRATOR, cache, int8=int8_loader())
    job = builder.jobs[0]
    assert job.plan.calibrate and job.onnx_path == onnx_files["fp32"] and job.calibration is not None
    assert job.calibration.cache is None and job.calibration.input_shape == SAMPLE_SHAPE
    # 10 images in batches of 4: the last partial batch is dropped.
    assert builder.float_layers == [[1, 2]]  # the HardSwish and Softmax layers, kept float by the policy
    assert len(entries(cache, CALIBRATION_KIND)) == 1
    assert read_layer_report(first.layers_path)[REPORT_KEY]["calibration_cache"] == "computed"

    # Another engine option: a new engine, but the same model and data, so the calibration is reused.
    second = cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]),
                           dataclasses.replace(CALIBRATOR, opt_level=1), cache, int8=int8_loader())
    assert builder.jobs[1].calibration is not None and builder.jobs[1].calibration.cache == b"calibrated on 8 images"
    assert read_layer_report(second.layers_path)[REPORT_KEY]["calibration_cache"] == "reused"

    # New data or a new model: calibrate again.
    cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), CALIBRATOR, cache,
                  int8=int8_loader(FakeCalibration(identity="calib-b")))
    rewrite(onnx_files["fp32"])
    cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), CALIBRATOR, cache, int8=int8_loader())
    assert [j.calibration.cache for j in builder.jobs[2:] if j.calibration is not None] == [None, None]
    assert len(entries(cache, CALIBRATION_KIND)) == 3


def test_policy_keeps_the_plugin_softmax_float(onnx_files: dict[str, Path], cache: Path,
                                              softmax_plugin_library: Path) -> None:
    """On an ONNX whose Softmax is the plugin's, the real default policy still pins the softmax layer float."""
    from levit_trt.precision_policy import POLICIES

    plugin_onnx = GivenOnnx.read(with_softmax_plugin(onnx_files["fp32"], cache))
    builder = FakeBuilder()
    engine = cached_engine(builder, plugin_onnx, CALIBRATOR, cache, int8=int8_loader(policy=POLICIES["default"]))
    assert builder.float_layers == [[1, 2]]  # HardSwish and the plugin softmax, as on the plugin-free graph
    assert engine.manifest["int8"]["policy"] == "default" and engine.manifest["int8"]["float_attention_bias_add"]


def test_calibrator_needs_one_full_batch(onnx_files: dict[str, Path], cache: Path) -> None:
    builder = FakeBuilder()
    with pytest.raises(ValueError, match="calib-a has 3 images, fewer than one calibration batch of 4"):
        cached_engine(builder, GivenOnnx.read(onnx_files["fp32"]), CALIBRATOR, cache,
                      int8=int8_loader(FakeCalibration(num_images=3)))
    assert builder.jobs == [] and entries(cache) == []


def test_calibrator_is_a_tensorrt_10_path(onnx_files: dict[str, Path], cache: Path) -> None:
    with pytest.raises(ValueError, match="TensorRT 11 removed implicit INT8 calibration"):
        cached_engine(FakeBuilder(tensorrt_version="11.1.0"), GivenOnnx.read(onnx_files["fp32"]), CALIBRATOR, cache,
                      int8=int8_loader())


def test_calibration_batches_are_checked() -> None:
    batches = list(calibration_batches(FakeCalibration(num_images=10), 4, SAMPLE_SHAPE))
    assert [len(b) for b in batches] == [4, 4]
    wrong = FakeCalibration(identity="calib-224", sample_shape=(3, 224, 224))
    with pytest.raises(ValueError, match=r"calibration batch 0 of calib-224 is torch.float32 \(4, 3, 224, 224\), but "
                                         r"the model takes float32 \[N, 3, 4, 4\]"):
        next(calibration_batches(wrong, 4, SAMPLE_SHAPE))


# --- engine files and the CLI ------------------------------------------------------------------------------

def test_engine_file_and_report_are_replaced_together_or_not_at_all(onnx_files: dict[str, Path], cache: Path,
                                                                    tmp_path: Path) -> None:
    old = cached_engine(FakeBuilder(), GivenOnnx.read(onnx_files["fp32"]), EngineOptions(), cache)
    new = cached_engine(FakeBuilder(), GivenOnnx.read(onnx_files["fp32"]), EngineOptions(opt_level=1), cache)
    target = tmp_path / "out" / "levit.engine"
    report = write_engine_file(old, target)
    before = (target.read_bytes(), report.read_bytes())
    broken = dataclasses.replace(new, directory=tmp_path / "no-such-entry")  # its files cannot be copied
    with pytest.raises(FileNotFoundError):
        write_engine_file(broken, target)
    assert (target.read_bytes(), report.read_bytes()) == before
    # The second rename fails (a folder holds the report's name): the engine already renamed is put back.
    report.unlink()
    report.mkdir()
    with pytest.raises(IsADirectoryError):
        write_engine_file(new, target)
    assert target.read_bytes() == before[0]
    assert sorted(p.name for p in target.parent.iterdir()) == ["levit.engine", "levit.engine.layers.json"]


def test_engine_file_with_its_report_beside_it(onnx_files: dict[str, Path], cache: Path, tmp_path: Path) -> None:
    engine = cached_engine(FakeBuilder(), GivenOnnx.read(onnx_files["fp32"]), EngineOptions(), cache)
    target = tmp_path / "out" / "levit.engine"
    report = write_engine_file(engine, target)
    assert report == layer_report_path(target)
    assert target.read_bytes() == engine.engine_path.read_bytes()
    assert read_layer_report(report)[REPORT_KEY]["manifest"] == json.loads(json.dumps(engine.manifest))
    assert sorted(p.name for p in target.parent.iterdir()) == ["levit.engine", "levit.engine.layers.json"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--opt-level", "9"], "EngineOptions.opt_level: must be an integer from 0 to 5"),
        (["--min-batch", "8", "--opt-batch", "4"], "EngineOptions.opt_batch: need min_batch <= opt_batch"),
    ],
)
def test_cli_build_rejects_bad_options(extra: list[str], message: str, onnx_files: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    engine = tmp_path / "x.engine"
    assert main(["build", "--onnx", str(onnx_files["fp32"]), "--engine", str(engine), *extra]) == 2
    assert message in capsys.readouterr().err and not engine.exists()


def test_cli_build_rejects_an_unknown_policy_before_anything_else(onnx_files: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    engine = tmp_path / "x.engine"
    assert main(["build", "--onnx", str(onnx_files["fp32"]), "--engine", str(engine), "--precision", "int8",
                 "--policy", "turbo"]) == 2
    assert ("EngineOptions.policy: unknown precision policy 'turbo'; valid policies: all-int8, activations, default"
            in capsys.readouterr().err)
    assert not engine.exists()


def test_cli_build_rejects_an_unknown_precision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--onnx", "m.onnx", "--engine", str(tmp_path / "x.engine"), "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_cli_build_of_a_missing_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = tmp_path / "x.engine"
    assert main(["build", "--onnx", str(tmp_path / "none.onnx"), "--engine", str(engine)]) == 2
    assert "none.onnx does not exist (write one with levit-trt export)" in capsys.readouterr().err
    assert not engine.exists()


def test_cli_build_without_tensorrt_says_why(onnx_files: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from levit_trt.tensorrt.binding import TensorRTNotInstalled, tensorrt_version

    try:
        tensorrt_version("tensorrt")
    except TensorRTNotInstalled as error:
        reason = str(error)
    else:
        pytest.skip("TensorRT is installed here; tests/test_tensorrt_backend.py runs levit-trt build")
    engine = tmp_path / "x.engine"
    code = main(["build", "--onnx", str(onnx_files["fp32"]), "--engine", str(engine), "--cache-dir",
                 str(tmp_path / "cache")])
    assert code == 2 and reason in capsys.readouterr().err
    assert not engine.exists() and not layer_report_path(engine).exists()


# --- the real INT8 inputs (calibration, policy, quantizer) through the orchestration ----------------------

def test_calibration_set_of_another_variant_is_refused(tmp_path: Path) -> None:
    from levit_trt.calibration import CalibrationError, write_calibration_set
    from levit_trt.data import write_synthetic_imagenet
    from levit_trt.tensorrt.engine_cache import int8_inputs_loader
    from levit_trt.variants import resolve_variant

    root = write_synthetic_imagenet(tmp_path / "imagenet", num_classes=1, images_per_class=1, split="train")
    write_calibration_set(root, "128S", 1, tmp_path / "calib", progress=False)
    options = EngineOptions(precision="int8", calib_dir=tmp_path / "calib")
    assert int8_inputs_loader(options, resolve_variant("128S"))().calibration.num_images == 1
    with pytest.raises(CalibrationError, match="was made for LeViT-128S, not LeViT-128;"):
        int8_inputs_loader(options, resolve_variant("128"))()


def test_real_int8_inputs_reach_the_builder(tmp_path: Path, cache: Path) -> None:
    """levit_128s through int8_inputs_loader: real synthetic calibration, the default policy and the
    ONNX Runtime quantizer feed both INT8 plans (only TensorRT itself is faked)."""
    from levit_trt.backends.base import ModelSource
    from levit_trt.precision_policy import resolve_policy
    from levit_trt.quantize import int8_nodes
    from levit_trt.tensorrt.engine_cache import int8_inputs_loader
    from levit_trt.variants import resolve_variant
    from levit_trt.weights import parse_weights

    variant = resolve_variant("128S")
    source = ModelSource(variant, parse_weights("random"), cache)
    options = EngineOptions(precision="int8", calib_images=8, calib_batch=4)
    builder = FakeBuilder()
    engine = cached_engine(builder, ExportedOnnx(source), options, cache, int8=int8_inputs_loader(options, variant))
    (job,) = builder.jobs
    qdq = onnx.load(str(job.onnx_path))
    kept_float = resolve_policy("default").float_nodes(qdq)
    assert onnx_form(qdq) == "qdq" and kept_float and not kept_float & set(int8_nodes(qdq))
    assert engine.manifest["int8"]["policy"] == "default"
    assert engine.manifest["int8"]["calibration"].startswith("sha256:")

    calibrator = dataclasses.replace(options, int8_mode="calibrator")
    cached_engine(builder, ExportedOnnx(source), calibrator, cache, int8=int8_inputs_loader(calibrator, variant))
    job = builder.jobs[1]
    assert job.calibration is not None and job.calibration.input_shape == (3, 224, 224)
    fp32 = onnx.load(str(job.onnx_path))
    layer_nodes = [[node.name] for node in fp32.graph.node]  # one network layer per ONNX node, as parsed
    kept = job.calibration.layers_kept_float(layer_nodes)
    assert {fp32.graph.node[i].name for i in kept} == resolve_policy("default").float_nodes(fp32)
    assert sum(len(batch) for batch in job.calibration.batches()) == 8
