"""TensorRT engines without TensorRT: which ONNX to parse, the engine cache, calibration caches, engine files.

Everything here is plain Python, so each decision is unit-tested on a CPU machine with a fake
`EngineBuilder`; `levit_trt.tensorrt.builder.TensorRTBuilder` is the real one and only carries a
`BuildJob` out. An engine is built once per manifest (`options.engine_manifest`: flavor, TensorRT
version and wheel CUDA, GPU or RTX targets, ONNX sha256, options, plugin hashes, INT8 source) into a
cache entry holding `engine.plan`, `layers.json` (the layer report) and `manifest.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from levit_trt.cache import atomic_outputs, cache_key, cached_build, canonical_json, read_manifest
from levit_trt.calibration import SYNTHETIC_CALIBRATION_IMAGES
from levit_trt.export import load_onnx, onnx_content_sha256
from levit_trt.plugins import library_sha256, softmax_plugin_identity
from levit_trt.precision_policy import DEFAULT_POLICY, QDQ_OP_TYPES
from levit_trt.tensorrt.layer_report import (
    LAYERS_FILENAME,
    REPORT_KEY,
    layer_report,
    layer_report_path,
    layers_kept_float,
    onnx_node_op_types,
    read_layer_report,
    weight_matmul_nodes,
    write_layer_report,
)
from levit_trt.tensorrt.options import (
    BuildPlan,
    EngineOptions,
    Flavor,
    GpuIdentity,
    Int8Mode,
    Int8Source,
    OnnxForm,
    calibration_manifest,
    check_gpu_precision,
    engine_manifest,
    plan_build,
    plan_major,
)
from levit_trt.tensorrt.plugin_libraries import plugin_libraries_for, uses_plugins

if TYPE_CHECKING:
    import onnx
    import torch

    from levit_trt.backends.base import ModelSource
    from levit_trt.calibration import CalibrationSet
    from levit_trt.precision_policy import PrecisionPolicy
    from levit_trt.variants import Variant

ENGINE_KIND = "tensorrt"
CALIBRATION_KIND = "tensorrt-calibration"
PLUGIN_ONNX_KIND = "onnx-softmax-plugin"
ENGINE_FILENAME = "engine.plan"
CALIBRATION_CACHE_FILENAME = "calibration.cache"
PLUGIN_ONNX_FILENAME = "model.onnx"
# Int8Source.policy of an engine parsed from a Q/DQ ONNX without levit-trt quantize's metadata.
PREQUANTIZED_POLICY = "prequantized"

QuantizeFn = Callable[[Path, "CalibrationSet", "PrecisionPolicy", Path], Path]


def _cached_qdq_onnx(fp32_onnx: Path, calibration: CalibrationSet, policy: PrecisionPolicy, cache_dir: Path) -> Path:
    """`levit_trt.quantize.cached_qdq_onnx`, imported when a Q/DQ ONNX is first needed (an INT8 build's path only)."""
    from levit_trt.quantize import cached_qdq_onnx

    return cached_qdq_onnx(fp32_onnx, calibration, policy, cache_dir)


@dataclass(frozen=True)
class Int8Inputs:
    """What an INT8 model needs besides the fp32 ONNX: calibration images, the float-fallback policy, a quantizer.

    `quantize` turns an fp32 ONNX into a Q/DQ ONNX (`levit_trt.quantize.cached_qdq_onnx` unless a
    test gives another).
    """

    calibration: CalibrationSet
    policy: PrecisionPolicy
    quantize: QuantizeFn = _cached_qdq_onnx

    def source(self, mode: Int8Mode) -> Int8Source:
        return Int8Source.from_policy(mode, self.policy.manifest(), self.calibration.identity)


def load_int8_inputs(
    policy: str = DEFAULT_POLICY,
    float_op_types: Sequence[str] = (),
    float_nodes: Sequence[str] = (),
    *,
    calib_dir: Path | None = None,
    variant: Variant | None = None,
    calib_images: int = SYNTHETIC_CALIBRATION_IMAGES,
) -> Int8Inputs:
    """The resolved policy and the calibration set of an INT8 model, for every backend that quantizes.

    Calibration images come from `calib_dir` (levit-trt calibrate), which must have been written
    for `variant` when that is known, else `calib_images` synthetic images of `variant`.
    """
    from levit_trt.calibration import load_calibration_set, synthetic_calibration_set
    from levit_trt.precision_policy import resolve_policy

    if calib_dir is None and variant is None:
        raise ValueError("an INT8 build from an fp32 ONNX needs calibration images: pass --calib DIR (written by "
                         "levit-trt calibrate), or build from the Q/DQ ONNX that levit-trt quantize writes")
    resolved = resolve_policy(policy, float_op_types, float_nodes)
    if calib_dir is not None:
        calibration = load_calibration_set(calib_dir, variant)
    else:
        assert variant is not None
        calibration = synthetic_calibration_set(variant, calib_images)
    return Int8Inputs(calibration, resolved)


def int8_inputs_loader(options: EngineOptions, variant: Variant | None) -> Callable[[], Int8Inputs]:
    """`load_int8_inputs` for `options`, deferred: `cached_engine` calls it only when an INT8 plan needs it.

    So a pre-quantized Q/DQ ONNX reads no images; any other INT8 build reads and hashes them even
    when its engine is cached, because their identity is part of the engine's key.
    """
    return functools.partial(load_int8_inputs, options.policy, options.float_op_types, options.float_nodes,
                             calib_dir=options.calib_dir, variant=variant, calib_images=options.calib_images)


def onnx_form(model: onnx.ModelProto) -> OnnxForm:
    """'qdq' for a graph with Q/DQ nodes, else 'fp16' or 'fp32' after its input's element type."""
    import onnx

    if any(node.op_type in QDQ_OP_TYPES for node in model.graph.node):
        return "qdq"
    if model.graph.input and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
        return "fp16"
    return "fp32"


def onnx_input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The input's dimensions after the batch, e.g. (3, 224, 224); ValueError unless they are fixed."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) < 2 or not all(d.HasField("dim_value") for d in dims[1:]):
        raise ValueError(f"ONNX input {model.graph.input[0].name!r} needs fixed dimensions after the batch, got "
                         f"{[d.dim_value if d.HasField('dim_value') else d.dim_param for d in dims]}")
    return tuple(int(d.dim_value) for d in dims[1:])


def with_softmax_plugin(onnx_path: Path, cache_dir: Path) -> Path:
    """A cached copy of `onnx_path` whose Softmax nodes are the plugin's (for Q/DQ ONNX, which the exporter
    cannot write: the quantizer calibrates in ONNX Runtime, which cannot run the plugin)."""
    import onnx

    from levit_trt.onnx_rewrites import REWRITE_VERSION, replace_softmax_with_plugin

    manifest = {"artifact": PLUGIN_ONNX_KIND, "rewrite": REWRITE_VERSION, "source_sha256": onnx_content_sha256(onnx_path),
                "plugin": dataclasses.asdict(softmax_plugin_identity()), "onnx": onnx.__version__}

    def build(directory: Path) -> None:
        model = onnx.load(str(onnx_path))
        if replace_softmax_with_plugin(model) == 0:
            raise ValueError(f"{onnx_path}: no Softmax node to replace with the plugin")
        onnx.save(model, str(directory / PLUGIN_ONNX_FILENAME))

    return cached_build(cache_dir, PLUGIN_ONNX_KIND, manifest, build) / PLUGIN_ONNX_FILENAME


class OnnxSource(Protocol):
    """Where the ONNX that TensorRT parses comes from, in the form a `BuildPlan` asks for."""

    @property
    def form_hint(self) -> OnnxForm | None:
        """The form this source has already (a user's file), or None when it makes each form on request."""

    @property
    def prequantized(self) -> bool:
        """True when the source already is a Q/DQ ONNX (no calibration or policy needed)."""

    def onnx(self, form: OnnxForm, int8: Int8Inputs | None, cache_dir: Path) -> Path: ...


@dataclass(frozen=True)
class ExportedOnnx:
    """The model's own ONNX (backends): fp32/fp16 from the exporter, Q/DQ from the quantizer; `plugin` (None,
    'attention' or 'softmax') says which of our plugins replaces each attention, or only its softmax."""

    source: ModelSource
    plugin: str | None = None
    form_hint: OnnxForm | None = None
    prequantized: bool = False

    def __post_init__(self) -> None:
        if self.plugin not in (None, "attention", "softmax"):
            raise ValueError(f"unknown plugin {self.plugin!r}; choose 'attention' or 'softmax'")

    def onnx(self, form: OnnxForm, int8: Int8Inputs | None, cache_dir: Path) -> Path:
        from levit_trt.export import ExportOptions

        if form != "qdq":
            return self.source.onnx_path(ExportOptions(precision=form, softmax_plugin=self.plugin == "softmax",
                                                       attention_plugin=self.plugin == "attention"))
        if self.plugin == "attention":
            raise ValueError("the fused attention plugin takes fp32 or fp16 inputs and has no place in a Q/DQ INT8 "
                             "graph; build INT8 engines with the softmax plugin (plugin='softmax', --plugin softmax)")
        assert int8 is not None, "cached_engine loads the INT8 inputs for a Q/DQ plan"
        qdq = int8.quantize(self.source.onnx_path(ExportOptions()), int8.calibration, int8.policy, cache_dir)
        return with_softmax_plugin(qdq, cache_dir) if self.plugin == "softmax" else qdq


@dataclass(frozen=True)
class GivenOnnx:
    """An ONNX file the user names (levit-trt build --onnx): parsed as it is, or quantized when INT8 needs Q/DQ.

    Make one with `GivenOnnx.read(path)`, which reads the file once and fails on a missing or bad one.
    """

    path: Path
    form: OnnxForm
    uses_plugins: bool  # levit_trt plugin nodes (softmax or attention) anywhere in the graph

    @classmethod
    def read(cls, path: Path) -> GivenOnnx:
        model = load_onnx(path)
        return cls(Path(path), onnx_form(model), uses_plugins(model))

    @property
    def form_hint(self) -> OnnxForm:
        return self.form

    @property
    def prequantized(self) -> bool:
        return self.form == "qdq"

    def onnx(self, form: OnnxForm, int8: Int8Inputs | None, cache_dir: Path) -> Path:
        if form == self.form:
            return self.path
        if form == "qdq" and self.form == "fp32":
            if self.uses_plugins:
                raise ValueError(f"{self.path} uses a levit_trt plugin, which the quantizer cannot run; quantize the "
                                 "ONNX exported without plugins")
            assert int8 is not None, "cached_engine loads the INT8 inputs for a Q/DQ plan"
            return int8.quantize(self.path, int8.calibration, int8.policy, cache_dir)
        advice = {
            "fp16": "export one with levit-trt export --precision fp16 (strongly typed networks take their precision "
                    "from the ONNX)",
            "fp32": "export the model with levit-trt export --precision fp32",
            "qdq": "give an fp32 ONNX to quantize, or the Q/DQ ONNX from levit-trt quantize",
        }[form]
        raise ValueError(f"{self.path} is a {self.form} ONNX, but this build parses a {form} ONNX; {advice}")


@dataclass(frozen=True)
class CalibrationJob:
    """TensorRT 10's implicit INT8: the batches its entropy calibrator reads, its cache, and the float layers."""

    batches: Callable[[], Iterator[torch.Tensor]]
    batch_size: int
    input_shape: tuple[int, ...]  # after the batch: (3, H, W)
    cache: bytes | None  # a calibration cache of the same model and data; None: calibrate
    node_op_types: Mapping[str, str]
    float_op_types: frozenset[str]
    float_node_names: frozenset[str]

    def layers_kept_float(self, layer_nodes: Sequence[Sequence[str]]) -> list[int]:
        """Network layers (by their ONNX nodes) that the policy keeps float: they get fp32 constraints."""
        return layers_kept_float(layer_nodes, self.node_op_types, self.float_op_types, self.float_node_names)


def calibration_batches(calibration: CalibrationSet, batch_size: int, input_shape: tuple[int, ...]) -> Iterator[torch.Tensor]:
    """Full fp32 CPU batches [batch_size, *input_shape] from a CalibrationSet; a last partial batch is dropped
    (the calibrator's buffer has one fixed shape); a batch of another shape or type is a ValueError."""
    import torch

    for index, batch in enumerate(calibration.batches(batch_size)):
        if batch.dtype != torch.float32 or batch.dim() != len(input_shape) + 1 or tuple(batch.shape[1:]) != input_shape:
            raise ValueError(
                f"calibration batch {index} of {calibration.identity} is {batch.dtype} {tuple(batch.shape)}, but the "
                f"model takes float32 [N, {', '.join(map(str, input_shape))}]; write calibration data for this "
                "variant with levit-trt calibrate")
        if batch.shape[0] > batch_size:
            raise ValueError(f"calibration batch {index} has {batch.shape[0]} images, more than the {batch_size} asked")
        if batch.shape[0] == batch_size:
            yield batch


@dataclass(frozen=True)
class BuildJob:
    """Everything one TensorRT build needs, decided here; `EngineBuilder.build` only carries it out."""

    onnx_path: Path
    options: EngineOptions
    plan: BuildPlan
    plugin_libraries: tuple[Path, ...] = ()
    calibration: CalibrationJob | None = None


@dataclass(frozen=True)
class BuiltEngine:
    serialized: bytes
    # IEngineInspector JSON (ProfilingVerbosity.DETAILED), or the same shape read from the builder's log
    # where no engine can be deserialized (layer_report.layers_from_build_log)
    engine_information: str
    calibration_cache: bytes | None = None  # what the entropy calibrator wrote, if it ran


class EngineBuilder(Protocol):
    """Builds serialized engines for one TensorRT flavor and version, and one GPU (None: RTX's targets)."""

    @property
    def flavor(self) -> Flavor: ...

    @property
    def tensorrt_version(self) -> str: ...

    @property
    def cuda_major(self) -> str | None: ...

    @property
    def gpu(self) -> GpuIdentity | None: ...

    def build(self, job: BuildJob) -> BuiltEngine: ...


@dataclass(frozen=True)
class CachedEngine:
    """A built engine in the cache: its files, what it was built from, and how."""

    directory: Path
    manifest: dict[str, Any]
    plan: BuildPlan
    int8: Int8Source | None
    plugin_libraries: tuple[Path, ...] = ()  # to load before deserializing the engine

    @property
    def key(self) -> str:
        return self.directory.name

    @property
    def engine_path(self) -> Path:
        return self.directory / ENGINE_FILENAME

    @property
    def layers_path(self) -> Path:
        return self.directory / LAYERS_FILENAME

    def precision_summary(self) -> dict[str, int]:
        return dict(read_layer_report(self.layers_path)[REPORT_KEY]["precision_summary"])


def _find_calibration_cache(cache_dir: Path, manifest: Mapping[str, Any]) -> bytes | None:
    """The cache of an earlier calibration with exactly this manifest, else None (entries appear atomically)."""
    entry = cache_dir / CALIBRATION_KIND / cache_key(manifest)
    if read_manifest(entry) != json.loads(canonical_json(manifest)):
        return None
    try:
        return (entry / CALIBRATION_CACHE_FILENAME).read_bytes()
    except OSError:
        return None


def cached_engine(
    builder: EngineBuilder,
    onnx: OnnxSource,
    options: EngineOptions,
    cache_dir: Path,
    *,
    int8: Callable[[], Int8Inputs] | None = None,
    plugin_libraries: Sequence[Path] = (),
) -> CachedEngine:
    """The engine for (ONNX, options) on this TensorRT and GPU, built only when no cache entry matches.

    A failing build (bad ONNX, missing plugin, TensorRT error) leaves no entry. `int8` loads the
    calibration set and policy, and is called only when an INT8 build needs them.
    """
    if options.flavor != builder.flavor:
        raise ValueError(f"EngineOptions.flavor={options.flavor!r}, but the builder is {builder.flavor!r}")
    if onnx.form_hint == "fp16" and options.precision == "fp16" and options.strongly_typed == "auto":
        options = dataclasses.replace(options, strongly_typed=True)  # an fp16 ONNX carries its precision itself
    plan = plan_build(options, plan_major(options.flavor, builder.tensorrt_version))
    if builder.gpu is not None:
        check_gpu_precision(options.precision, builder.gpu)
    inputs: Int8Inputs | None = None
    if options.precision == "int8" and not (plan.onnx_form == "qdq" and onnx.prequantized):
        if int8 is None:
            raise ValueError("an INT8 build needs calibration data and a precision policy; none were given")
        inputs = int8()
    onnx_path = onnx.onnx(plan.onnx_form, inputs, cache_dir)
    model = load_onnx(onnx_path)
    libraries = plugin_libraries_for(model, plugin_libraries)
    int8_source: Int8Source | None = None
    if options.precision == "int8":
        int8_source = inputs.source(options.int8_mode) if inputs is not None else _prequantized_source(model, onnx_path)
    onnx_sha256 = onnx_content_sha256(onnx_path, model)
    manifest = engine_manifest(
        tensorrt_version=builder.tensorrt_version, gpu=builder.gpu, onnx_sha256=onnx_sha256, options=options,
        plugin_sha256={path.name: library_sha256(path) for path in libraries}, int8=int8_source,
        cuda_major=builder.cuda_major,
    )

    def build(directory: Path) -> None:
        calibration: CalibrationJob | None = None
        calib_manifest: dict[str, Any] | None = None
        if plan.calibrate:
            assert inputs is not None and builder.gpu is not None, "only TensorRT 10 (on a GPU) calibrates"
            calib_manifest = calibration_manifest(
                tensorrt_version=builder.tensorrt_version, gpu=builder.gpu, onnx_sha256=onnx_sha256,
                calibration=inputs.calibration.identity, calib_batch=options.calib_batch)
            calibration = _calibration_job(inputs, model, options.calib_batch,
                                           _find_calibration_cache(cache_dir, calib_manifest))
        built = builder.build(BuildJob(onnx_path, options, plan, libraries, calibration))
        (directory / ENGINE_FILENAME).write_bytes(built.serialized)
        provenance = {
            "cache_key": cache_key(manifest),
            "onnx": str(onnx_path),
            "plan": dataclasses.asdict(plan),
            "int8": int8_source.describe() if int8_source is not None else None,
            "calibration_cache": None if calibration is None else ("reused" if calibration.cache else "computed"),
            "manifest": manifest,
        }
        write_layer_report(directory / LAYERS_FILENAME,
                           layer_report(built.engine_information, provenance, onnx_node_op_types(model),
                                        weight_matmul_nodes(model)))
        if calibration is not None and calibration.cache is None and built.calibration_cache:
            assert calib_manifest is not None
            data = built.calibration_cache

            def write_calibration_cache(entry: Path) -> None:
                (entry / CALIBRATION_CACHE_FILENAME).write_bytes(data)

            cached_build(cache_dir, CALIBRATION_KIND, calib_manifest, write_calibration_cache)

    entry = cached_build(cache_dir, ENGINE_KIND, manifest, build)
    return CachedEngine(entry, manifest, plan, int8_source, libraries)


def _prequantized_source(model: onnx.ModelProto, path: Path) -> Int8Source:
    """The policy and calibration a Q/DQ ONNX's metadata records (levit-trt quantize writes them);
    PREQUANTIZED_POLICY and an unknown calibration for a Q/DQ ONNX from elsewhere."""
    from levit_trt.quantize import quantization_metadata

    stamp = quantization_metadata(model, str(path))
    if stamp is None:
        return Int8Source("qdq", PREQUANTIZED_POLICY)
    return Int8Source.from_policy("qdq", stamp["policy"], stamp["calibration"])


def _calibration_job(inputs: Int8Inputs, model: onnx.ModelProto, batch_size: int, cache: bytes | None) -> CalibrationJob:
    calibration = inputs.calibration
    if cache is None and calibration.num_images < batch_size:
        raise ValueError(f"calibration set {calibration.identity} has {calibration.num_images} images, fewer than one "
                         f"calibration batch of {batch_size}; use more images or a smaller calib_batch")
    input_shape = onnx_input_shape(model)
    return CalibrationJob(
        batches=lambda: calibration_batches(calibration, batch_size, input_shape),
        batch_size=batch_size,
        input_shape=input_shape,
        cache=cache,
        node_op_types=onnx_node_op_types(model),
        float_op_types=frozenset(inputs.policy.float_op_types),
        float_node_names=frozenset(inputs.policy.float_nodes(model)),
    )


def check_engine_flavor(engine_path: Path, flavor: Flavor) -> None:
    """ValueError unless the manifest that came with an engine file (its cache entry's, or the layer report beside a
    user-named file) says `flavor` built it: a TensorRT engine given to TensorRT-RTX, or the reverse, is refused
    before its bytes reach a runtime that would misread them."""
    path = Path(engine_path)
    manifest: Any = read_manifest(path.parent) if path.name == ENGINE_FILENAME else None
    if manifest is None:
        try:
            manifest = read_layer_report(layer_report_path(path))[REPORT_KEY].get("manifest")
        except (ValueError, KeyError):
            manifest = None
    if not isinstance(manifest, Mapping) or "flavor" not in manifest:
        raise ValueError(f"{path}: no levit_trt manifest beside it (manifest.json or {layer_report_path(path).name}), "
                         "so its TensorRT flavor is unknown; build it with levit-trt build")
    if manifest["flavor"] != flavor:
        raise ValueError(f"{path} was built by the {manifest['flavor']} flavor ({manifest.get('tensorrt')}), not "
                         f"{flavor}; load it with --flavor {manifest['flavor']} or rebuild it")


def write_engine_file(engine: CachedEngine, engine_path: Path) -> Path:
    """Copy a cached engine to a user-named file with its layer report beside it; returns the report's path.

    Both files are replaced or neither is: an engine never sits beside the report of another one.
    """
    report_path = layer_report_path(engine_path)
    with atomic_outputs(engine_path, report_path) as (engine_tmp, report_tmp):
        shutil.copyfile(engine.engine_path, engine_tmp)
        shutil.copyfile(engine.layers_path, report_tmp)
    return report_path
