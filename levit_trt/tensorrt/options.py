"""What a TensorRT engine is built from and how: options, the TensorRT 10/11/RTX build plan, cache manifests.

Pure Python (no tensorrt import), so every decision here is unit-tested on a CPU machine;
`levit_trt.tensorrt.builder` only carries the plan out.

TensorRT-RTX (flavor "rtx", module tensorrt_rtx 1.7) has TensorRT 11's typing: networks are always
strongly typed and BuilderFlag has no FP16/INT8, and there is no IInt8Calibrator, so it plans as
TensorRT 11 does (`plan_major`). It builds ahead of time for target compute capabilities
(IBuilderConfig.set_compute_capability) rather than for the GPU at hand.

TensorRT 10 vs 11, read from the C++ headers in shared/tensorrt-headers/{10.13,11.1}/NvInfer.h:
- 10.13 marks BuilderFlag kFP16, kINT8, kOBEY_PRECISION_CONSTRAINTS "deprecated in 10.12,
  superseded by strong typing"; 11.1's BuilderFlag no longer has them (kTF32 remains, and is
  "enabled by default" in both).
- NetworkDefinitionCreationFlag::kSTRONGLY_TYPED is a choice in 10.13; in 11.1 it is "deprecated
  in 11.0 ... strongly typed mode is always enabled ... ignored". kEXPLICIT_BATCH (ignored since
  10.0) is gone from 11.1, so we never pass it.
- IInt8Calibrator/IInt8EntropyCalibrator2, IBuilderConfig::setInt8Calibrator/setCalibrationProfile,
  ILayer::setPrecision and IBuilder::platformHasFastFp16/Int8 exist (deprecated) in 10.13 and
  are absent from 11.1: implicit INT8 calibration is a TensorRT 10 path only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from levit_trt.calibration import SYNTHETIC_CALIBRATION_IMAGES
from levit_trt.precision_policy import DEFAULT_POLICY, POLICIES

Flavor = Literal["tensorrt", "rtx"]
EnginePrecision = Literal["fp32", "fp16", "int8"]
Int8Mode = Literal["qdq", "calibrator"]
OnnxForm = Literal["fp32", "fp16", "qdq"]

FLAVORS: tuple[Flavor, ...] = ("tensorrt", "rtx")
ENGINE_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
# The members of tensorrt_rtx.ComputeCapability (1.7.1: SM75, SM80, SM86, SM89, SM120, SM121), as
# "--compute-capability" spells them. RTX itself may still refuse a target for a network (SM75: "FP32
# GEMM is not supported"), which the build reports.
RTX_TARGETS: tuple[str, ...] = ("75", "80", "86", "89", "120", "121")
# Where TensorRT-RTX 1.7's runtime runs without explicit targets (its support matrix): not on 9.x or 10.x.
RTX_RUNTIME_COMPUTE_CAPABILITIES: tuple[str, ...] = ("8.0", "8.6", "8.9", "12.0", "12.1")
# The TensorRT major version whose plugin headers RTX takes: its IPluginV3 interfaces are TensorRT 11's
# (measured: a softmax plugin built against the 11.1 headers loads and builds under tensorrt_rtx 1.7.1).
RTX_PLUGIN_HEADER_MAJOR = 11
INT8_MODES: tuple[str, ...] = ("qdq", "calibrator")
# EngineOptions fields that only shape INT8 engines.
INT8_FIELDS = ("int8_mode", "policy", "float_op_types", "float_nodes", "calib_images", "calib_batch")
# Bump when the build code changes in a way that changes the engines it produces.
ENGINE_RECIPE_VERSION = 2
# TensorRT's own limits for IBuilderConfig::setBuilderOptimizationLevel (NvInfer.h: "0 to 5",
# default 3). Only the range's ends come from there.
OPT_LEVEL_RANGE = (0, 5)
DEFAULT_OPT_LEVEL = 3
# Issue 3: "an optimisation profile over a batch range ... defaults covering 1-64 with 16 optimal".
DEFAULT_BATCH_RANGE = (1, 16, 64)
# The lowest compute capability with native arithmetic in each reduced precision (CUDA C++
# Programming Guide, "Arithmetic Instructions" throughput table: half-precision arithmetic from
# 5.3, __dp4a 8-bit integer dot products from 6.1). fp32 runs everywhere.
PRECISION_MIN_COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {"fp16": (5, 3), "int8": (6, 1)}


@dataclass(frozen=True)
class EngineOptions:
    """Every choice that changes a built engine; validated on creation, errors name the field.

    `strongly_typed="auto"` picks per TensorRT version (see `plan_build`). INT8 comes from a
    Q/DQ ONNX (`int8_mode="qdq"`, TensorRT 10 and 11) or from TensorRT 10's implicit entropy
    calibration (`"calibrator"`); `policy`, `float_op_types` and `float_nodes` say which nodes stay
    float in either path. `calib_dir=None` means `calib_images` synthetic calibration images.
    `flavor` picks TensorRT or TensorRT-RTX; `compute_capabilities` are RTX's build targets
    (RTX_TARGETS; empty: RTX's default set).
    """

    precision: EnginePrecision = "fp32"
    flavor: Flavor = "tensorrt"
    compute_capabilities: tuple[str, ...] = ()
    min_batch: int = DEFAULT_BATCH_RANGE[0]
    opt_batch: int = DEFAULT_BATCH_RANGE[1]
    max_batch: int = DEFAULT_BATCH_RANGE[2]
    tf32: bool = False
    opt_level: int = DEFAULT_OPT_LEVEL
    workspace_mib: int | None = None  # None: TensorRT's default (all device memory)
    timing_cache: Path | None = None
    strongly_typed: bool | Literal["auto"] = "auto"
    int8_mode: Int8Mode = "qdq"
    policy: str = DEFAULT_POLICY
    float_op_types: tuple[str, ...] = ()
    float_nodes: tuple[str, ...] = ()
    calib_dir: Path | None = None
    calib_images: int = SYNTHETIC_CALIBRATION_IMAGES
    calib_batch: int = 16

    def __post_init__(self) -> None:
        def bad(field: str, message: str) -> ValueError:
            return ValueError(f"EngineOptions.{field}: {message}")

        if self.flavor not in FLAVORS:
            raise bad("flavor", f"must be one of {', '.join(FLAVORS)}, got {self.flavor!r}")
        if isinstance(self.compute_capabilities, str) or not all(isinstance(c, str) for c in self.compute_capabilities):
            raise bad("compute_capabilities", f"must be a tuple of strings such as '86', got {self.compute_capabilities!r}")
        if self.compute_capabilities and self.flavor != "rtx":
            raise bad("compute_capabilities", "target compute capabilities are a TensorRT-RTX choice; use flavor='rtx' "
                                              "(TensorRT builds for the GPU it runs on)")
        unknown = [c for c in self.compute_capabilities if c not in RTX_TARGETS]
        if unknown:
            raise bad("compute_capabilities", f"TensorRT-RTX has no target {', '.join(unknown)}; valid targets: "
                                              f"{', '.join(RTX_TARGETS)}")
        # One order and no repeats, so that the cache key and the build see the same targets.
        object.__setattr__(self, "compute_capabilities", tuple(sorted(set(self.compute_capabilities), key=int)))
        if self.precision not in ENGINE_PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(ENGINE_PRECISIONS)}, got {self.precision!r}")
        for name in ("min_batch", "opt_batch", "max_batch", "calib_images", "calib_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, f"must be a positive integer, got {value!r}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise bad("opt_batch", f"need min_batch <= opt_batch <= max_batch, got "
                                   f"{self.min_batch} / {self.opt_batch} / {self.max_batch}")
        low, high = OPT_LEVEL_RANGE
        if isinstance(self.opt_level, bool) or not isinstance(self.opt_level, int) or not low <= self.opt_level <= high:
            raise bad("opt_level", f"must be an integer from {low} to {high} (TensorRT's range), got {self.opt_level!r}")
        if self.workspace_mib is not None and (
                isinstance(self.workspace_mib, bool) or not isinstance(self.workspace_mib, int) or self.workspace_mib < 1):
            raise bad("workspace_mib", f"must be a positive number of MiB or None, got {self.workspace_mib!r}")
        if not isinstance(self.tf32, bool):
            raise bad("tf32", f"must be True or False, got {self.tf32!r}")
        if not (isinstance(self.strongly_typed, bool) or self.strongly_typed == "auto"):
            raise bad("strongly_typed", f"must be 'auto', True or False, got {self.strongly_typed!r}")
        if self.int8_mode not in INT8_MODES:
            raise bad("int8_mode", f"must be one of {', '.join(INT8_MODES)}, got {self.int8_mode!r}")
        if self.precision == "int8" and self.int8_mode == "calibrator" and self.strongly_typed is True:
            raise bad("strongly_typed", "implicit INT8 calibration (int8_mode='calibrator') needs a weakly typed "
                                        "network; use strongly_typed='auto' or False, or int8_mode='qdq'")
        if self.policy not in POLICIES:
            raise bad("policy", f"unknown precision policy {self.policy!r}; valid policies: {', '.join(POLICIES)}")
        for name in ("float_op_types", "float_nodes"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise bad(name, f"must be a tuple of non-empty names, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("timing_cache", "calib_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())

    def manifest_fields(self) -> dict[str, Any]:
        """The options as they enter an engine's cache key.

        Left out on purpose: `timing_cache` is a file of measured tactic timings that only speeds a
        build up; `calib_dir` and `calib_images` choose the calibration images, whose content enters
        the key through `Int8Source.calibration` (their identity hash) instead; `calib_batch` except
        for the calibrator, the only path that reads it; and the INT8 fields of an fp32/fp16 engine,
        which cannot change it (so `--policy` on an fp16 build does not rebuild it).
        """
        fields = dataclasses.asdict(self)
        del fields["timing_cache"], fields["calib_dir"], fields["calib_images"]
        fields["compute_capabilities"] = list(self.compute_capabilities)
        if self.precision == "int8":
            fields["float_op_types"] = sorted(self.float_op_types)
            fields["float_nodes"] = sorted(self.float_nodes)
            if self.int8_mode != "calibrator":
                del fields["calib_batch"]
        else:
            for name in INT8_FIELDS:
                fields.pop(name, None)
        return fields


@dataclass(frozen=True)
class BuildPlan:
    """How `EngineOptions` become a network and builder flags on one TensorRT major version."""

    strongly_typed: bool
    onnx_form: OnnxForm  # which ONNX the network must be parsed from
    builder_flags: tuple[str, ...]  # trt.BuilderFlag member names to set (TF32 is cleared otherwise)
    calibrate: bool  # TensorRT 10 implicit INT8: entropy calibrator + per-layer float constraints

    @property
    def input_precision(self) -> str:
        """The engine's input dtype: fp16 only for networks parsed from an fp16 ONNX."""
        return "fp16" if self.onnx_form == "fp16" else "fp32"


def tensorrt_major(version: str) -> int:
    """Major version from a TensorRT version string such as '10.13.0.35'."""
    try:
        return int(version.split(".")[0])
    except ValueError as error:
        raise ValueError(f"cannot read a TensorRT version from {version!r}") from error


def plan_major(flavor: Flavor, version: str) -> int:
    """The TensorRT major version whose rules a build follows: TensorRT-RTX's are TensorRT 11's."""
    return 11 if flavor == "rtx" else tensorrt_major(version)


def plugin_header_majors(flavor: Flavor, version: str) -> tuple[int, ...]:
    """The TensorRT header majors a plugin library may be compiled against to load into this flavor and version."""
    return (RTX_PLUGIN_HEADER_MAJOR,) if flavor == "rtx" else (tensorrt_major(version),)


def rtx_runtime_problem(compute_capability: str) -> str | None:
    """Why TensorRT-RTX cannot run engines on a GPU of this compute capability ('9.0'), or None where it can."""
    if compute_capability in RTX_RUNTIME_COMPUTE_CAPABILITIES:
        return None
    return (f"TensorRT-RTX does not run on compute capability {compute_capability} (it runs on "
            f"{', '.join(RTX_RUNTIME_COMPUTE_CAPABILITIES)}: A100, A10, L4/L40, RTX 30/40/50); use the tensorrt flavor")


def plan_build(options: EngineOptions, trt_major: int) -> BuildPlan:
    """Decide typing, ONNX form and flags; raise ValueError for what this TensorRT cannot do.

    TensorRT 11: always strongly typed (the flag is ignored, weak-typing flags are gone), so fp16
    needs an fp16 ONNX and int8 the Q/DQ ONNX. TensorRT 10, `strongly_typed="auto"`: fp32 and fp16
    stay weakly typed (fp16 via BuilderFlag.FP16, as the reference `--enable-fp16` did, letting
    TensorRT keep layers in fp32 where fp16 is not faster), Q/DQ INT8 is strongly typed (the Q/DQ
    nodes alone decide what runs in INT8, the rest runs in fp32: the engine TensorRT 11 builds and
    the one the ONNX Runtime accuracy tests predict), and the calibrator path is weakly typed
    because implicit calibration and ILayer precision constraints only exist there.
    """
    if trt_major < 10:
        raise ValueError(f"TensorRT {trt_major}.x is not supported; levit_trt needs TensorRT 10 or 11")
    tf32 = ("TF32",) if options.tf32 else ()
    if trt_major >= 11:
        if options.strongly_typed is False:
            raise ValueError(
                f"EngineOptions.strongly_typed=False: TensorRT {trt_major} builds strongly typed networks only "
                "(weakly typed precision flags were removed in 11.0); use 'auto' or True")
        if options.precision == "int8" and options.int8_mode == "calibrator":
            raise ValueError(
                f"EngineOptions.int8_mode='calibrator': TensorRT {trt_major} removed implicit INT8 calibration "
                "(IInt8Calibrator); use int8_mode='qdq' (a Q/DQ ONNX from levit-trt quantize)")
        form: OnnxForm = {"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[options.precision]  # type: ignore[assignment]
        return BuildPlan(True, form, tf32, calibrate=False)
    strongly = options.strongly_typed
    if options.precision == "fp32":
        return BuildPlan(strongly is True, "fp32", tf32, calibrate=False)
    if options.precision == "fp16":
        if strongly is True:
            return BuildPlan(True, "fp16", tf32, calibrate=False)
        return BuildPlan(False, "fp32", ("FP16", *tf32), calibrate=False)
    if options.int8_mode == "calibrator":
        return BuildPlan(False, "fp32", ("INT8", "OBEY_PRECISION_CONSTRAINTS", *tf32), calibrate=True)
    if strongly is False:
        # A weakly typed network with Q/DQ layers still needs kINT8 to let TensorRT pick INT8 kernels.
        return BuildPlan(False, "qdq", ("INT8", *tf32), calibrate=False)
    return BuildPlan(True, "qdq", tf32, calibrate=False)


@dataclass(frozen=True)
class Int8Source:
    """Where an INT8 engine's scales came from, and which nodes were kept float: for keys and reports.

    The float choice is the resolved policy's whole manifest (`PrecisionPolicy.manifest()`), so two
    policies that keep different nodes float never share a key.
    """

    mode: Int8Mode
    policy: str
    float_op_types: tuple[str, ...] = ()
    float_node_names: tuple[str, ...] = ()
    float_attention_bias_add: bool = False
    calibration: str | None = None  # calibration data identity (CalibrationSet.identity); None: unknown

    @classmethod
    def from_policy(cls, mode: Int8Mode, policy: Mapping[str, Any], calibration: str | None) -> Int8Source:
        """From a `PrecisionPolicy.manifest()` (of the policy in hand, or as a Q/DQ ONNX's metadata recorded it)."""
        return cls(mode, str(policy["name"]), tuple(policy["float_op_types"]), tuple(policy["float_node_names"]),
                   bool(policy["float_attention_bias_add"]), calibration)

    def manifest(self) -> dict[str, Any]:
        return {"mode": self.mode, "policy": self.policy, "float_op_types": sorted(self.float_op_types),
                "float_node_names": sorted(self.float_node_names),
                "float_attention_bias_add": self.float_attention_bias_add, "calibration": self.calibration}

    def describe(self) -> dict[str, Any]:
        """Short form for `Backend.describe()` and the accuracy JSON."""
        return {"int8_path": "qdq (explicit Q/DQ ONNX)" if self.mode == "qdq" else "calibrator (TensorRT 10 implicit)",
                "int8_policy": self.policy, "int8_calibration": self.calibration}


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU an engine is built for; TensorRT engines only run on the GPU model they were tuned on."""

    name: str
    compute_capability: str  # "9.0"


def check_gpu_precision(precision: str, gpu: GpuIdentity) -> None:
    """ValueError when `gpu` has no native arithmetic for `precision` (see PRECISION_MIN_COMPUTE_CAPABILITY).

    Checked before building: TensorRT would otherwise fall back to fp32 kernels without saying so
    in a way a user sees, or fail deep inside the build.
    """
    needed = PRECISION_MIN_COMPUTE_CAPABILITY.get(precision)
    if needed is None:
        return
    try:
        have = tuple(int(part) for part in gpu.compute_capability.split("."))
    except ValueError as error:
        raise ValueError(f"cannot read the compute capability {gpu.compute_capability!r} of {gpu.name}") from error
    if have < needed:
        raise ValueError(
            f"{gpu.name} (compute capability {gpu.compute_capability}) has no native {precision} arithmetic "
            f"(needs {needed[0]}.{needed[1]} or newer); build fp32 on this GPU")


def engine_manifest(
    *,
    tensorrt_version: str,
    gpu: GpuIdentity | None,
    onnx_sha256: str,
    options: EngineOptions,
    plugin_sha256: dict[str, str] | None = None,
    int8: Int8Source | None = None,
    cuda_major: str | None = None,
) -> dict[str, Any]:
    """Every input of an engine build: a cached engine is reused only when all of it matches.

    The full TensorRT version (not only the major) is included because serialized engines are
    only guaranteed to load in the exact version that built them; `cuda_major` is the CUDA of its
    wheel (cu12 and cu13 wheels report one version). `gpu` is None for TensorRT-RTX, whose engines
    are built for the target compute capabilities in the options, not for the GPU at hand; the
    flavor and the targets enter through the options.
    """
    return {
        "artifact": "tensorrt-engine",
        "recipe": ENGINE_RECIPE_VERSION,
        "flavor": options.flavor,
        "tensorrt": tensorrt_version,
        "tensorrt_cuda": cuda_major,
        "gpu": None if gpu is None else {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "onnx_sha256": onnx_sha256,
        "options": options.manifest_fields(),
        "plugins": [{"library": name, "sha256": digest} for name, digest in sorted((plugin_sha256 or {}).items())],
        "int8": int8.manifest() if int8 is not None else None,
    }


def calibration_manifest(
    *,
    tensorrt_version: str,
    gpu: GpuIdentity,
    onnx_sha256: str,
    calibration: str,
    calib_batch: int,
    algorithm: str = "entropy2",
) -> dict[str, Any]:
    """The key of a TensorRT 10 calibration cache: a new model or new calibration data recalibrates.

    The precision policy is not part of it: calibration measures every tensor of the fp32 network,
    and the float constraints only decide afterwards which of those scales are used.
    """
    return {
        "artifact": "tensorrt-calibration-cache",
        "tensorrt": tensorrt_version,
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "onnx_sha256": onnx_sha256,
        "calibration": calibration,
        "calib_batch": calib_batch,
        "algorithm": algorithm,
    }


def check_batch_in_profile(batch: int, min_batch: int, max_batch: int, where: str = "the engine") -> None:
    """ValueError when `batch` is outside an engine's optimisation profile, naming the range."""
    if not min_batch <= batch <= max_batch:
        raise ValueError(
            f"batch {batch} is outside {where}'s optimisation profile [{min_batch}, {max_batch}]; rebuild with "
            f"EngineOptions(min_batch=..., max_batch=...) (levit-trt build --min-batch/--max-batch) to cover it")
