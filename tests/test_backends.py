"""The backend registry: names, availability with reasons, unsupported combinations as errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from levit_trt.backends.base import BackendUnavailable, ModelSource, NoEngineForPlugin, UnsupportedCombination
from levit_trt.backends.registry import BACKENDS, UnknownBackendError, backend_class, create_backend, parse_backends
from levit_trt.variants import resolve_variant
from levit_trt.weights import parse_weights, synthetic_images


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> ModelSource:
    return ModelSource(resolve_variant("128S"), parse_weights("random"), tmp_path_factory.mktemp("cache"))


def test_import_needs_no_gpu_library() -> None:
    """`import levit_trt` and its CPU modules pull in neither tensorrt nor onnxruntime; the report
    modules import matplotlib only to draw a plot."""
    code = ("import sys, levit_trt, levit_trt.cli, levit_trt.backends.registry, levit_trt.export, levit_trt.data,"
            " levit_trt.report, levit_trt.runs, levit_trt.environment;"
            "print(sorted(m for m in ('tensorrt', 'onnxruntime', 'matplotlib') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[1])
    assert output.stdout.strip() == "[]"


def test_unknown_backend_lists_valid_ones() -> None:
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'tensorflow'; valid backends: torch"):
        backend_class("tensorflow")
    assert parse_backends("all") == list(BACKENDS)


def test_fp16_on_cpu_is_an_error_not_a_skip(source: ModelSource) -> None:
    with pytest.raises(UnsupportedCombination, match="does not run fp16 on cpu"):
        create_backend("torch", source, "fp16", "cpu")
    with pytest.raises(UnsupportedCombination, match="unknown precision 'fp8'"):
        create_backend("torch", source, "fp8", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_cuda_backend_without_gpu_is_unavailable_with_reason(source: ModelSource) -> None:
    assert "no CUDA device" in backend_class("torch").availability("cuda").reason
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        create_backend("torch", source, "fp16", "cuda")


def test_torch_and_onnxruntime_agree_on_cpu(source: ModelSource) -> None:
    torch_backend = create_backend("torch", source, "fp32", "cpu")
    ort_backend = create_backend("onnxruntime", source, "fp32", "cpu")
    images = synthetic_images(4, seed=31)
    expected = torch_backend(torch_backend.prepare_input(images))
    got = ort_backend(ort_backend.prepare_input(images))
    # float32 with another summation order: measured max diff 6e-6 on logits of std ~0.2.
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert torch_backend.describe()["backend"] == "torch" and ort_backend.setup_seconds > 0


def test_sdpa_backend_matches_explicit_torch_on_cpu(source: ModelSource) -> None:
    explicit = create_backend("torch", source, "fp32", "cpu")
    sdpa = create_backend("torch-sdpa", source, "fp32", "cpu")
    images = synthetic_images(2, seed=32)
    # Same fp32 function by another kernel: 0 on this CPU (SDPA's math path with a mask); fused
    # GPU kernels sum in another order.
    torch.testing.assert_close(sdpa(images), explicit(images), atol=1e-4, rtol=0)
    assert (sdpa.describe()["attention"], explicit.describe()["attention"]) == ("sdpa", "explicit")


def test_plugin_choice_is_checked_and_named(source: ModelSource) -> None:
    plugin_backend = backend_class("torch-plugin")
    assert plugin_backend.plugin_choices == ("attention", "softmax")
    with pytest.raises(UnsupportedCombination, match="backend 'torch-plugin' has no plugin 'flash'"):
        plugin_backend.availability_for("cuda", plugin="flash")
    with pytest.raises(UnsupportedCombination, match="backend 'torch-sdpa' has no plugin 'softmax'"):
        backend_class("torch-sdpa").check_plugin("softmax")


def test_compiled_sdpa_backend_is_built_from_the_sdpa_model(source: ModelSource) -> None:
    from levit_trt.models import attention_forms

    backend = create_backend("torch-compile-sdpa", source, "fp32", "cpu")  # torch.compile is lazy: no compile here
    assert attention_forms(backend.compiled._orig_mod) == {"sdpa"}
    assert backend.describe()["attention"] == "sdpa"


def test_case_ids_name_the_plugin_of_plugin_backends() -> None:
    from levit_trt.matrix import Case

    variant = resolve_variant("128S")
    assert Case(variant, "torch-plugin", "fp16", 16, "cuda", plugin="softmax").id == "levit_128s-torch-plugin-softmax-fp16-bs16"
    assert Case(variant, "torch-plugin", "fp16", 16, "cuda", True).id == "levit_128s-torch-plugin-attention-graph-fp16-bs16"
    assert Case(variant, "torch-sdpa", "fp16", 16, "cuda", plugin="softmax").id == "levit_128s-torch-sdpa-fp16-bs16"


@pytest.mark.parametrize("backend", ["tensorrt-plugin", "tensorrt-rtx-plugin"])
def test_int8_with_the_attention_plugin_is_refused_before_any_build(source: ModelSource, backend: str) -> None:
    """The fused attention plugin has no INT8 form: the backend says so (NoEngineForPlugin, on which the
    suites skip) and names the softmax plugin, before touching TensorRT, so the check holds on any machine."""
    with pytest.raises(NoEngineForPlugin, match="--plugin softmax"):
        backend_class(backend)(source, precision="int8", device="cuda", plugin="attention")
