"""EngineOptions validation, the TensorRT 10/11 build plans (checked against both versions' headers), cache manifests."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from levit_trt.cache import cache_key
from levit_trt.calibration import SYNTHETIC_CALIBRATION_IMAGES
from levit_trt.tensorrt.options import (
    DEFAULT_BATCH_RANGE,
    INT8_FIELDS,
    BuildPlan,
    EngineOptions,
    GpuIdentity,
    Int8Source,
    calibration_manifest,
    check_batch_in_profile,
    check_gpu_precision,
    engine_manifest,
    plan_build,
    tensorrt_major,
)

HEADER_VERSIONS = {10: "10.13", 11: "11.1"}
GPU = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0")


def test_defaults_cover_batches_1_to_64_with_16_optimal() -> None:
    options = EngineOptions()
    assert (options.min_batch, options.opt_batch, options.max_batch) == DEFAULT_BATCH_RANGE == (1, 16, 64)
    assert options.precision == "fp32" and options.tf32 is False
    # The synthetic calibration images the ONNX Runtime INT8 backend uses too (one measured default).
    assert options.calib_images == SYNTHETIC_CALIBRATION_IMAGES


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"precision": "fp8"}, "precision", "must be one of fp32, fp16, int8, got 'fp8'"),
        ({"min_batch": 0}, "min_batch", "positive integer, got 0"),
        ({"max_batch": True}, "max_batch", "positive integer, got True"),
        ({"calib_batch": 2.0}, "calib_batch", "positive integer, got 2.0"),
        ({"min_batch": 8, "opt_batch": 4}, "opt_batch", "min_batch <= opt_batch <= max_batch, got 8 / 4 / 64"),
        ({"opt_batch": 65}, "opt_batch", "got 1 / 65 / 64"),
        ({"opt_level": 6}, "opt_level", "from 0 to 5"),
        ({"opt_level": -1}, "opt_level", "from 0 to 5"),
        ({"workspace_mib": 0}, "workspace_mib", "positive number of MiB or None"),
        ({"tf32": "yes"}, "tf32", "True or False"),
        ({"strongly_typed": "maybe"}, "strongly_typed", "'auto', True or False"),
        ({"int8_mode": "implicit"}, "int8_mode", "one of qdq, calibrator"),
        ({"precision": "int8", "int8_mode": "calibrator", "strongly_typed": True}, "strongly_typed",
         "needs a weakly typed network"),
        ({"policy": "fp8"}, "policy", "unknown precision policy 'fp8'; valid policies: all-int8, activations, default"),
        ({"float_op_types": "Softmax"}, "float_op_types", "tuple of non-empty names"),
        ({"float_nodes": ("",)}, "float_nodes", "tuple of non-empty names"),
    ],
)
def test_bad_options_name_the_field(fields: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^EngineOptions\.{field}: .*{re.escape(message)}"):
        EngineOptions(**fields)


def test_options_are_normalised() -> None:
    options = EngineOptions(timing_cache="~/tc.cache", calib_dir="calib", float_op_types=["Softmax"])  # type: ignore[arg-type]
    assert options.timing_cache == Path.home() / "tc.cache" and options.calib_dir == Path("calib")
    assert options.float_op_types == ("Softmax",)
    # The calibrator/strong-typing conflict only matters for INT8 engines.
    assert EngineOptions(int8_mode="calibrator", strongly_typed=True).strongly_typed is True


def test_tensorrt_major() -> None:
    assert tensorrt_major("10.13.0.35") == 10 and tensorrt_major("11.1.0") == 11
    with pytest.raises(ValueError, match="cannot read a TensorRT version from 'trt'"):
        tensorrt_major("trt")


# (options, TensorRT major) -> (strongly typed, ONNX form, builder flags, calibrate)
PLANS = [
    (EngineOptions(), 10, (False, "fp32", (), False)),
    (EngineOptions(tf32=True), 10, (False, "fp32", ("TF32",), False)),
    (EngineOptions(strongly_typed=True), 10, (True, "fp32", (), False)),
    (EngineOptions(precision="fp16"), 10, (False, "fp32", ("FP16",), False)),
    (EngineOptions(precision="fp16", strongly_typed=True), 10, (True, "fp16", (), False)),
    (EngineOptions(precision="int8"), 10, (True, "qdq", (), False)),
    (EngineOptions(precision="int8", strongly_typed=False), 10, (False, "qdq", ("INT8",), False)),
    (EngineOptions(precision="int8", int8_mode="calibrator"), 10,
     (False, "fp32", ("INT8", "OBEY_PRECISION_CONSTRAINTS"), True)),
    (EngineOptions(precision="int8", int8_mode="calibrator", tf32=True), 10,
     (False, "fp32", ("INT8", "OBEY_PRECISION_CONSTRAINTS", "TF32"), True)),
    (EngineOptions(), 11, (True, "fp32", (), False)),
    (EngineOptions(tf32=True), 11, (True, "fp32", ("TF32",), False)),
    (EngineOptions(precision="fp16"), 11, (True, "fp16", (), False)),
    (EngineOptions(precision="int8"), 11, (True, "qdq", (), False)),
]


@pytest.mark.parametrize(("options", "major", "expected"), PLANS)
def test_build_plans(options: EngineOptions, major: int, expected: tuple[Any, ...]) -> None:
    plan = plan_build(options, major)
    assert (plan.strongly_typed, plan.onnx_form, plan.builder_flags, plan.calibrate) == expected
    assert plan.input_precision == ("fp16" if plan.onnx_form == "fp16" else "fp32")


def builder_flags_in_header(headers: Path) -> set[str]:
    """BuilderFlag members declared in a TensorRT NvInfer.h, without the k prefix (the Python names)."""
    header = headers / "NvInfer.h"
    body = re.search(r"enum class BuilderFlag : int32_t\s*\{(.*?)\};", header.read_text(), re.DOTALL)
    assert body is not None, f"no BuilderFlag enum in {header}"
    return {name for name in re.findall(r"^\s*k([A-Z0-9_]+)\b", body.group(1), re.MULTILINE)}


@pytest.mark.parametrize("major", sorted(HEADER_VERSIONS))
def test_every_planned_flag_exists_in_that_tensorrt(major: int, tensorrt_headers) -> None:
    """The flags a plan sets are real BuilderFlag members of that major version's headers."""
    declared = builder_flags_in_header(tensorrt_headers(HEADER_VERSIONS[major]))
    assert "TF32" in declared
    planned = {flag for options, plan_major, _ in PLANS if plan_major == major
               for flag in plan_build(options, major).builder_flags}
    assert planned and planned <= declared
    if major == 11:  # why TensorRT 11 plans are strongly typed: the weak-typing precision flags are gone
        assert not {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} & declared


@pytest.mark.parametrize(
    ("options", "major", "message"),
    [
        (EngineOptions(), 9, "TensorRT 9.x is not supported"),
        (EngineOptions(strongly_typed=False), 11, "strongly typed networks only"),
        (EngineOptions(precision="int8", int8_mode="calibrator"), 11, "removed implicit INT8 calibration"),
    ],
)
def test_plans_this_tensorrt_cannot_build(options: EngineOptions, major: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_build(options, major)


def test_batch_outside_profile_names_the_range_and_the_fix() -> None:
    check_batch_in_profile(1, 1, 64)
    check_batch_in_profile(64, 1, 64)
    for batch in (0, 65):
        with pytest.raises(ValueError, match=rf"batch {batch} is outside engine x's optimisation profile \[1, 64\]; "
                                             r"rebuild .*--min-batch/--max-batch"):
            check_batch_in_profile(batch, 1, 64, where="engine x")


@pytest.mark.parametrize(
    ("precision", "capability", "ok"),
    [("fp32", "3.0", True), ("fp16", "5.2", False), ("fp16", "5.3", True), ("int8", "6.0", False),
     ("int8", "6.1", True), ("int8", "10.0", True)],
)
def test_gpu_precision_support(precision: str, capability: str, ok: bool) -> None:
    gpu = GpuIdentity("Some GPU", capability)
    if ok:
        check_gpu_precision(precision, gpu)
    else:
        with pytest.raises(ValueError, match=rf"Some GPU \(compute capability {capability}\) has no native {precision}"):
            check_gpu_precision(precision, gpu)


def test_unreadable_compute_capability() -> None:
    with pytest.raises(ValueError, match="cannot read the compute capability 'sm90'"):
        check_gpu_precision("fp16", GpuIdentity("Some GPU", "sm90"))


# --- manifests: every input of a build changes the key; nothing else does --------------------------------

def manifest(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tensorrt_version": "10.13.0.35", "gpu": GPU, "onnx_sha256": "a" * 64, "options": EngineOptions(),
        "plugin_sha256": None, "int8": None,
    }
    base.update(changes)
    return engine_manifest(**base)


INT8 = Int8Source("qdq", "default", ("HardSwish", "Softmax"), ("attn_bias_add",), float_attention_bias_add=True,
                  calibration="calib-1")
# A different valid value for every EngineOptions field.
OTHER_VALUES: dict[str, Any] = {
    "precision": "fp16", "min_batch": 2, "opt_batch": 8, "max_batch": 32, "tf32": True, "opt_level": 5,
    "workspace_mib": 512, "timing_cache": Path("t.cache"), "strongly_typed": True, "int8_mode": "calibrator",
    "policy": "all-int8", "float_op_types": ("Softmax",), "float_nodes": ("node_1",), "calib_dir": Path("calib"),
    "calib_images": 64, "calib_batch": 8, "flavor": "rtx",
}
# A speed-up file; where the calibration images come from and how many, whose content is keyed via
# Int8Source.calibration; and the calibrator's batch size, which the Q/DQ path does not read.
NOT_IN_KEY = {"timing_cache", "calib_dir", "calib_images", "calib_batch"}


def test_other_values_cover_every_option_field() -> None:
    # compute_capabilities needs flavor="rtx": test_rtx_targets_change_the_key covers it
    assert set(OTHER_VALUES) | {"compute_capabilities"} == {f.name for f in dataclasses.fields(EngineOptions)}


def test_rtx_targets_change_the_key_and_their_order_does_not() -> None:
    rtx = EngineOptions(flavor="rtx")
    keys = {cache_key(manifest(options=dataclasses.replace(rtx, compute_capabilities=targets), gpu=None))
            for targets in ((), ("86",), ("80", "86"))}
    assert len(keys) == 3
    assert (cache_key(manifest(options=dataclasses.replace(rtx, compute_capabilities=("86", "80")), gpu=None))
            in keys)


@pytest.mark.parametrize(("changes", "message"), [
    ({"compute_capabilities": ("86",)}, "TensorRT-RTX choice"),
    ({"flavor": "rtx", "compute_capabilities": ("90",)}, "no target 90"),
    ({"flavor": "rtx", "compute_capabilities": "86"}, "tuple of strings"),
    ({"flavor": "tensorrt-rtx"}, "must be one of tensorrt, rtx"),
])
def test_bad_flavor_or_targets_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineOptions(**changes)


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_each_option_changes_the_int8_key(field: str) -> None:
    base = EngineOptions(precision="int8", strongly_typed=False)
    changed = dataclasses.replace(base, **{field: OTHER_VALUES[field]})
    same = cache_key(manifest(options=base, int8=INT8)) == cache_key(manifest(options=changed, int8=INT8))
    assert same == (field in NOT_IN_KEY)


def test_calib_batch_changes_the_calibrator_key_only() -> None:
    calibrator = EngineOptions(precision="int8", int8_mode="calibrator")
    for base, keyed in ((calibrator, True), (EngineOptions(precision="int8"), False)):
        other = dataclasses.replace(base, calib_batch=8)
        assert (cache_key(manifest(options=base, int8=INT8)) != cache_key(manifest(options=other, int8=INT8))) is keyed


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_int8_only_options_leave_an_fp32_key_alone(field: str) -> None:
    base = EngineOptions()
    changed = dataclasses.replace(base, **{field: OTHER_VALUES[field]})
    same = cache_key(manifest(options=base)) == cache_key(manifest(options=changed))
    assert same == (field in NOT_IN_KEY or field in INT8_FIELDS)


@pytest.mark.parametrize(
    "changes",
    [
        {"tensorrt_version": "10.13.2.6"},
        {"gpu": GpuIdentity("NVIDIA A100-SXM4-80GB", "9.0")},
        {"gpu": GpuIdentity(GPU.name, "8.0")},
        {"onnx_sha256": "b" * 64},
        {"plugin_sha256": {"liblevit_softmax_trt.so": "c" * 64}},
        {"int8": INT8},
        {"cuda_major": "13"},
    ],
    ids=["tensorrt-version", "gpu-name", "compute-capability", "onnx", "plugin", "int8-source", "wheel-cuda"],
)
def test_each_build_input_changes_the_key(changes: dict[str, Any]) -> None:
    assert cache_key(manifest(**changes)) != cache_key(manifest())


def test_plugin_hash_and_int8_source_fields_change_the_key() -> None:
    plugin = {"liblevit_softmax_trt.so": "c" * 64}
    assert cache_key(manifest(plugin_sha256=plugin)) != cache_key(
        manifest(plugin_sha256={"liblevit_softmax_trt.so": "d" * 64}))
    for change in ({"mode": "calibrator"}, {"policy": "all-int8"}, {"float_op_types": ("Softmax",)},
                   {"float_node_names": ()}, {"float_attention_bias_add": False}, {"calibration": "calib-2"}):
        other = dataclasses.replace(INT8, **change)
        assert cache_key(manifest(int8=other)) != cache_key(manifest(int8=INT8)), change


def test_manifest_lists_are_order_free() -> None:
    options = EngineOptions(precision="int8", float_op_types=("Softmax", "HardSwish"))
    reordered = EngineOptions(precision="int8", float_op_types=("HardSwish", "Softmax"))
    swapped = dataclasses.replace(INT8, float_op_types=tuple(reversed(INT8.float_op_types)))
    assert manifest(options=options, int8=INT8) == manifest(options=reordered, int8=swapped)


def test_calibration_manifest_changes_with_model_data_and_batch() -> None:
    def key(**changes: Any) -> str:
        fields: dict[str, Any] = {"tensorrt_version": "10.13.0.35", "gpu": GPU, "onnx_sha256": "a" * 64,
                                  "calibration": "calib-1", "calib_batch": 16}
        fields.update(changes)
        return cache_key(calibration_manifest(**fields))

    base = key()
    for changes in ({"onnx_sha256": "b" * 64}, {"calibration": "calib-2"}, {"calib_batch": 8},
                    {"tensorrt_version": "10.14.0"}, {"gpu": GpuIdentity("Other", "8.6")}):
        assert key(**changes) != base, changes
    assert key() == base


def test_int8_source_describes_path_and_policy() -> None:
    assert INT8.describe() == {"int8_path": "qdq (explicit Q/DQ ONNX)", "int8_policy": "default",
                               "int8_calibration": "calib-1"}
    calibrated = dataclasses.replace(INT8, mode="calibrator")
    assert calibrated.describe()["int8_path"] == "calibrator (TensorRT 10 implicit)"


def test_build_plan_is_frozen() -> None:
    plan = BuildPlan(True, "fp16", (), calibrate=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.onnx_form = "fp32"  # type: ignore[misc]
