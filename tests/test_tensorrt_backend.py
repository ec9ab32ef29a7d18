"""The TensorRT backend on a GPU: parity with PyTorch, fp16 agreement, the batch profile, the plugin engine, CUDA
graphs, layer reports, the engine cache, INT8 and levit-trt build.

Every test is skipped, with the reason, where TensorRT or a CUDA GPU is missing (or, for INT8, the calibration
and quantization modules). Engines are built for LeViT-128S with non-degenerate random weights over a small
batch profile, and cached on disk (--cache-dir), so a second run loads them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from levit_trt.backends.base import Backend, ModelSource
from levit_trt.backends.registry import backend_class, create_backend
from levit_trt.cli import main
from levit_trt.tensorrt.layer_report import (
    REPORT_KEY,
    layer_precision,
    layer_report_path,
    layer_tactic,
    onnx_node_names,
    read_layer_report,
)
from levit_trt.tensorrt.options import EngineOptions, tensorrt_major
from levit_trt.variants import resolve_variant
from levit_trt.weights import parse_weights, synthetic_images

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

# A small profile builds faster than the default 1-64; 16 images fill it.
OPTIONS = EngineOptions(min_batch=1, opt_batch=8, max_batch=16)
# fp32 engines (TF32 off) against PyTorch fp32 on the CPU: another summation order and other kernels;
# issue 3's bound for logits of std ~0.2.
FP32_ATOL = 1e-3
# fp16 against fp32: bf16 (8 mantissa bits) measured min cosine 0.9979 and full top-1 agreement on these
# 16 images; fp16 has 11 bits, so 0.999 leaves headroom. One image's top-2 logits are 1.4e-4 apart, a
# near-tie that fp16 rounding may flip, hence 15 of 16.
FP16_MIN_COSINE = 0.999
FP16_MIN_AGREEMENT = 15 / 16


@pytest.fixture(scope="module")
def source(cache_dir: Path) -> ModelSource:
    status = backend_class("tensorrt").availability("cuda")
    if not status.available:
        pytest.skip(status.reason)
    return ModelSource(resolve_variant("128S"), parse_weights("random"), cache_dir)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_images(16, seed=7)


@pytest.fixture(scope="module")
def reference(source: ModelSource, images: torch.Tensor) -> torch.Tensor:
    """PyTorch fp32 logits on the CPU: the independent reference."""
    with torch.inference_mode():
        return source.torch_model()(images)


@pytest.fixture(scope="module")
def backend(source: ModelSource) -> Callable[..., Backend]:
    """`backend(name, precision, **options)`: each built once per module; skipped with the reason where unavailable."""
    built: dict[str, Backend] = {}

    def get(name: str = "tensorrt", precision: str = "fp32", **options: Any) -> Backend:
        status = backend_class(name).availability_for("cuda", **options)  # a plugin choice needs its own library
        if not status.available:
            pytest.skip(status.reason)
        options.setdefault("engine_options", OPTIONS)
        key = json.dumps([name, precision, repr(sorted(options.items()))])
        if key not in built:
            built[key] = create_backend(name, source, precision, "cuda", **options)
        return built[key]

    return get


def run(backend: Backend, images: torch.Tensor) -> torch.Tensor:
    return backend(backend.prepare_input(images)).float().cpu()


def test_fp32_matches_pytorch(backend: Callable[..., Backend], images: torch.Tensor, reference: torch.Tensor) -> None:
    engine = backend()
    logits = run(engine, images)
    assert (logits - reference).abs().max().item() <= FP32_ATOL
    info = engine.describe()
    assert info["tensorrt"] and info["engine_key"] and info["batch_range"] == [1, 16]
    assert info["layer_precisions"].get("fp32", 0) > 0 and "fp16" not in info["layer_precisions"]


def test_fp16_agrees_with_fp32(backend: Callable[..., Backend], images: torch.Tensor, reference: torch.Tensor) -> None:
    engine = backend(precision="fp16")
    logits = run(engine, images)
    cosine = torch.nn.functional.cosine_similarity(logits.double(), reference.double(), dim=1)
    agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    assert cosine.min().item() >= FP16_MIN_COSINE and agreement >= FP16_MIN_AGREEMENT
    assert engine.describe()["layer_precisions"].get("fp16", 0) > 0


def test_input_shape_is_set_per_call(backend: Callable[..., Backend], images: torch.Tensor,
                                     reference: torch.Tensor) -> None:
    engine = backend()
    for batch in (1, 3, 16):
        logits = run(engine, images[:batch])
        assert logits.shape == (batch, 1000)
        assert (logits - reference[:batch]).abs().max().item() <= FP32_ATOL


def test_batch_outside_the_profile_is_a_clear_error(backend: Callable[..., Backend], images: torch.Tensor) -> None:
    engine = backend()
    too_many = torch.cat([images, images[:1]])
    with pytest.raises(ValueError, match=r"batch 17 is outside .*optimisation profile \[1, 16\]; rebuild"):
        engine(engine.prepare_input(too_many))


def test_wrong_inputs_are_clear_errors(backend: Callable[..., Backend], images: torch.Tensor) -> None:
    engine = backend()
    with pytest.raises(ValueError, match="input is on cpu"):
        engine(images[:2])
    with pytest.raises(ValueError, match="takes torch.float32"):
        engine(images[:2].to("cuda", torch.float16))
    with pytest.raises(ValueError, match=r"takes \[N, 3, 224, 224\]"):
        engine(images[:2, :, :112].to("cuda"))


@pytest.mark.parametrize(("plugin", "library"), [("attention", "liblevit_attention_trt.so"),
                                                ("softmax", "liblevit_softmax_trt.so")])
def test_plugin_engine_matches_pytorch(backend: Callable[..., Backend], images: torch.Tensor,
                                       reference: torch.Tensor, plugin: str, library: str) -> None:
    engine = backend("tensorrt-plugin", plugin=plugin)
    assert (run(engine, images) - reference).abs().max().item() <= FP32_ATOL
    libraries = [entry["library"] for entry in engine.engine.manifest["plugins"]]  # type: ignore[attr-defined]
    assert libraries == [library] and engine.describe()["plugin"] == plugin


def test_cuda_graph_replays_the_engine(backend: Callable[..., Backend], images: torch.Tensor) -> None:
    eager, graphed = backend(), backend(cuda_graph=True)
    assert graphed.describe()["engine_key"] == eager.describe()["engine_key"]  # the same engine
    for batch in (8, 8, 4):  # a repeat replays; a new shape recaptures
        x = eager.prepare_input(torch.roll(images, shifts=batch, dims=0)[:batch])
        expected = eager(x).clone()
        got = graphed(x).clone()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)  # same engine and tactics; replay only


def test_layer_report_beside_the_cached_engine(backend: Callable[..., Backend]) -> None:
    engine = backend(precision="fp16")
    cached = engine.engine  # type: ignore[attr-defined]
    report = read_layer_report(cached.layers_path)
    assert report[REPORT_KEY]["precision_summary"] == engine.describe()["layer_precisions"]
    assert report[REPORT_KEY]["cache_key"] == cached.key
    detailed = [layer for layer in report["Layers"] if isinstance(layer, dict)]
    # NoOp layers carry only "TacticValue", so layer_tactic reads either
    assert detailed and all(layer_tactic(layer) is not None or layer.get("LayerType") == "Reformat" for layer in detailed)


def test_cached_engine_is_loaded_not_rebuilt(source: ModelSource, backend: Callable[..., Backend]) -> None:
    first = backend()
    plan = first.engine.engine_path  # type: ignore[attr-defined]
    stamp = plan.stat().st_mtime_ns
    again = create_backend("tensorrt", source, "fp32", "cuda", engine_options=OPTIONS)
    assert again.engine.engine_path == plan and plan.stat().st_mtime_ns == stamp  # type: ignore[attr-defined]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("use_plugin", [False, True], ids=["trt-softmax", "plugin"])
def test_softmax_engine_against_float64(source: ModelSource, dtype: torch.dtype, use_plugin: bool) -> None:
    if use_plugin:
        status = backend_class("tensorrt-plugin").availability_for("cuda", plugin="softmax")
        if not status.available:
            pytest.skip(status.reason)
    from levit_trt.tensorrt.softmax_engine import softmax_engine

    shape = (8, 4, 196, 49)  # LeViT-128S's first-stage attention scores at batch 8
    softmax = softmax_engine(shape, dtype, use_plugin)
    x = (torch.randn(shape, device="cuda") * 3).to(dtype)
    out = softmax(x)
    torch.cuda.synchronize()
    expected = torch.softmax(x.double(), dim=-1)
    error = ((out.double() - expected).norm() / expected.norm()).item()
    # fp32: a few ulp per element; fp16: the output rounding (2^-11 relative) dominates.
    assert out.dtype == dtype and error <= (1e-6 if dtype == torch.float32 else 2e-3)


def test_cli_build_writes_the_engine_and_its_report(source: ModelSource, reference: torch.Tensor,
                                                    images: torch.Tensor, tmp_path: Path, cache_dir: Path) -> None:
    from levit_trt.tensorrt.runner import EngineRunner

    engine_path = tmp_path / "levit_128s.engine"
    code = main(["build", "--onnx", str(source.onnx_path()), "--engine", str(engine_path), "--min-batch", "1",
                 "--opt-batch", "8", "--max-batch", "16", "--cache-dir", str(cache_dir)])
    assert code == 0
    report = read_layer_report(layer_report_path(engine_path))
    assert report[REPORT_KEY]["manifest"]["options"]["max_batch"] == 16
    runner = EngineRunner.load("tensorrt", engine_path, "cuda")
    logits = runner(images.cuda()).float().cpu()
    assert (logits - reference).abs().max().item() <= FP32_ATOL


# --- INT8: needs the calibration, precision-policy and quantization modules --------------------------------------

INT8_OPTIONS = dataclasses.replace(OPTIONS, calib_images=64, calib_batch=16)


def require_int8_modules() -> None:
    for module in ("levit_trt.calibration", "levit_trt.precision_policy", "levit_trt.quantize"):
        pytest.importorskip(module, reason=f"{module} is not part of this checkout")


def float_kept_layers_in_int8(report: dict[str, Any], model_path: Path, policy_name: str) -> list[str]:
    """Names of engine layers made from nodes the policy keeps float that nevertheless run in INT8."""
    import onnx

    from levit_trt.tensorrt.layer_report import onnx_node_op_types

    policy = pytest.importorskip("levit_trt.precision_policy").resolve_policy(policy_name)
    model = onnx.load(str(model_path), load_external_data=False)
    kept = policy.float_nodes(model)
    op_types = onnx_node_op_types(model)
    return [layer["Name"] for layer in report["Layers"] if isinstance(layer, dict)
            and layer_precision(layer) == "int8"
            and any(n in kept or op_types.get(n) in policy.float_op_types
                    for n in onnx_node_names(layer.get("Metadata", "")))]


def test_int8_qdq_engine(backend: Callable[..., Backend], images: torch.Tensor, reference: torch.Tensor) -> None:
    require_int8_modules()
    engine = backend(precision="int8", engine_options=INT8_OPTIONS)
    logits = run(engine, images)
    assert torch.isfinite(logits).all()
    # Random weights are not trained to be quantized; this only shows the engine computes the same function.
    assert torch.nn.functional.cosine_similarity(logits.double(), reference.double(), dim=1).min().item() >= 0.9
    info = engine.describe()
    assert info["int8_path"].startswith("qdq") and info["int8_policy"] == "default"
    assert info["layer_precisions"].get("int8", 0) > 0


def test_int8_calibrator_engine_keeps_policy_layers_float(source: ModelSource, backend: Callable[..., Backend]) -> None:
    require_int8_modules()
    from levit_trt.tensorrt.binding import tensorrt_version

    if tensorrt_major(tensorrt_version("tensorrt")) >= 11:
        pytest.skip("implicit INT8 calibration was removed in TensorRT 11")
    options = dataclasses.replace(INT8_OPTIONS, int8_mode="calibrator")
    engine = backend(precision="int8", engine_options=options)
    cached = engine.engine  # type: ignore[attr-defined]
    report = read_layer_report(cached.layers_path)
    assert report[REPORT_KEY]["int8"]["int8_path"].startswith("calibrator")
    assert report[REPORT_KEY]["precision_summary"].get("int8", 0) > 0
    assert float_kept_layers_in_int8(report, source.onnx_path(), "default") == []
    # Another build option, same model and data: the calibration cache is reused.
    again = create_backend("tensorrt", source, "int8", "cuda", engine_options=dataclasses.replace(options, opt_level=2))
    assert read_layer_report(again.engine.layers_path)[REPORT_KEY]["calibration_cache"] == "reused"  # type: ignore[attr-defined]


def test_profile_layers_reports_each_layer_time(backend: Callable[..., Backend], images: torch.Tensor) -> None:
    engine = backend()
    profile = engine.profile_layers(images[:4].cuda(), iterations=3)  # type: ignore[attr-defined]
    assert profile and all(name and ms >= 0 for name, ms in profile)
    assert len({name for name, _ in profile}) == len(profile)
    assert sum(ms for _, ms in profile) > 0
