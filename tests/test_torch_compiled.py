"""torch.compile and CUDA-graph backends compute what eager PyTorch computes; bad modes are errors."""

from __future__ import annotations

import pytest
import torch

from levit_trt.backends.base import BackendUnavailable, ModelSource
from levit_trt.backends.registry import create_backend
from levit_trt.backends.torch_compiled import TorchCompileBackend, compile_modes
from levit_trt.variants import resolve_variant
from levit_trt.weights import parse_weights, synthetic_images


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> ModelSource:
    return ModelSource(resolve_variant("128S"), parse_weights("random"), tmp_path_factory.mktemp("cache"))


def test_unknown_mode_is_an_error_listing_the_known_ones(source: ModelSource) -> None:
    with pytest.raises(ValueError, match=r"unknown torch.compile mode 'fastest'.*reduce-overhead"):
        TorchCompileBackend(source, "fp32", "cpu", mode="fastest")
    assert "max-autotune" in compile_modes()


def test_compiled_on_cpu_matches_eager(source: ModelSource) -> None:
    eager = create_backend("torch", source, "fp32", "cpu")
    compiled = create_backend("torch-compile", source, "fp32", "cpu")
    images = synthetic_images(2, seed=41)
    compiled.prepare_shape(images)
    assert compiled.describe()["compile_seconds"]["2"] > 0
    # Inductor fuses and reorders float32 sums: measured max diff 2.0e-5 on logits of std 1.8 (stand-in recipe 3).
    torch.testing.assert_close(compiled(images), eager(images), atol=1e-4, rtol=0)


def test_compile_failure_names_variant_and_mode(source: ModelSource, monkeypatch) -> None:
    compiled = create_backend("torch-compile", source, "fp32", "cpu")

    def broken(images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(compiled, "compiled", broken)
    with pytest.raises(RuntimeError, match=r"torch.compile \(mode='default'\) failed for LeViT-128S fp32 batch 3"):
        compiled(synthetic_images(3))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["torch-cudagraph", "torch-compile", "torch-compile-sdpa", "torch-compile-plugin"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_backends_match_eager(source: ModelSource, name: str, precision: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    eager = create_backend("torch", source, precision, "cuda")
    reference = create_backend("torch", source, "fp32", "cuda")
    try:
        backend = create_backend(name, source, precision, "cuda")
    except BackendUnavailable as error:  # torch-compile-plugin without the built op
        pytest.skip(str(error))
    for batch in (2, 5, 2):  # a second shape is captured/compiled on its own; the first is reused
        images = synthetic_images(batch, seed=50 + batch).cuda()
        exact = reference(images).double()
        expected = eager(backend.prepare_input(images)).double()
        got = backend(backend.prepare_input(images)).double().clone()
        if precision == "fp32":
            # Fused kernels sum in another order; on the H100 the max difference was 1.8e-3 on logits
            # of std ~0.5 of the earlier, chaotic random weights (recipe 2; not re-measured on recipe 3,
            # which rounds far less: no GPU here), so bound the error norm instead.
            assert (got - expected).norm() / expected.norm() < 1e-3
        else:
            # fp16: inductor keeps fp32 intermediates inside fused kernels, so the compiled model may
            # differ from eager fp16 by more than eager fp16 differs from fp32; both are judged against
            # the fp32 reference, and the compiled/captured model must be no worse than eager fp16.
            assert cosine(got, exact) >= min(0.99, cosine(expected, exact) - 0.005)
    seconds = backend.describe()
    assert set(seconds.get("graph_capture_seconds", seconds.get("compile_seconds"))) == {"2", "5"}


@pytest.mark.gpu
@pytest.mark.parametrize("name, options", [("torch-sdpa", {}), ("torch-plugin", {"plugin": "attention"}),
                                           ("torch-plugin", {"plugin": "softmax"})], ids=["sdpa", "attention", "softmax"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_eager_attention_forms_match_fp32_reference(source: ModelSource, name: str, options: dict,
                                                    precision: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    try:
        backend = create_backend(name, source, precision, "cuda", **options)
    except BackendUnavailable as error:  # the plugin op not built
        pytest.skip(str(error))
    eager = create_backend("torch", source, precision, "cuda")
    reference = create_backend("torch", source, "fp32", "cuda")
    images = synthetic_images(4, seed=61).cuda()
    exact = reference(images).double()
    got = backend(backend.prepare_input(images)).double()
    expected = eager(eager.prepare_input(images)).double()
    if precision == "fp32":
        assert (got - exact).norm() / exact.norm() < 1e-3  # as the compiled backends above
    else:  # no worse than eager fp16 against fp32, as above
        assert cosine(got, exact) >= min(0.99, cosine(expected, exact) - 0.005)
