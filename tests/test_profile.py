"""The profile command: kernel names sorted into categories, per-forward sums, and the command on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from levit_trt.cli import main
from levit_trt.profile import CATEGORIES, KernelTime, kernel_category, profile_backend, summarize

# Names as torch.profiler, cuDNN, cuBLAS, inductor and TensorRT report them (H100/H200 runs and the CPU).
REAL_NAMES = {
    "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas":
        "GEMM",
    "cutlass_80_tensorop_s1688gemm_f16_256x128_32x3_nn_align8": "GEMM",
    "nvjet_tst_128x64_64x8_1x1_v_bz_coopB_TNN": "GEMM",
    "triton_tem_fused_addmm_3": "GEMM",
    "aten::addmm": "GEMM",
    "node_MatMul_7": "GEMM",
    "void at::native::(anonymous namespace)::softmax_warp_forward<c10::Half, c10::Half, float, 8, false, false>"
    "(c10::Half*, c10::Half const*, int, int, int, bool const*, int, bool)": "softmax",
    "void levit_trt::softmaxRowsInRegistersKernel<__half, 4>(__half const*, __half*, long, int)": "softmax",
    "triton_per_fused__softmax_add_mul_5": "softmax",
    "aten::_softmax": "softmax",
    "fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::half_t, "
    "cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)": "attention",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4, false, false, cutlass::half_t>>"
    "(pytorch_flash::Flash_fwd_params)": "attention",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_cga1x1x1_kernel0_0": "attention",
    "void levit_trt::levitAttentionKernel<__half, 16, 32>(levit_trt::AttentionParams)": "attention",
    "stages.0.blocks.0.attn.LevitAttention": "attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::Half>, "
    "at::detail::Array<char*, 3>>(int, at::native::CUDAFunctor_add<c10::Half>, at::detail::Array<char*, 3>)":
        "elementwise",
    "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::hardswish_kernel"
    "(at::TensorIteratorBase&)::{lambda()#1}::operator()() const::{lambda(float)#1}, at::detail::Array<char*, 2>>"
    "(int, float, at::detail::Array<char*, 2>)": "elementwise",
    "triton_poi_fused_add_hardswish_view_2": "elementwise",
    "node_add_87": "elementwise",
    "aten::hardswish": "elementwise",
    "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::"
    "direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}::operator()() "
    "const::{lambda(c10::Half)#1}>(at::TensorIteratorBase&, ...)::{lambda(int)#1}>(int, ...)": "layout/copy",
    "triton_poi_fused_clone_0": "layout/copy",
    "Memcpy DtoD (Device -> Device)": "layout/copy",
    "void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false, true, (cudnnKernelDataType_t)0>"
    "(cudnn::engines_precompiled::nchw2nhwc_params_t<float>, __half const*, __half*)": "layout/copy",
    "aten::copy_": "layout/copy",
    "node_Reshape_385": "layout/copy",
    "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x64x64_warpgroupsize1x1x1_g1_execute_"
    "kernel__5x_cudnn": "conv",
    "aten::mkldnn_convolution": "conv",
    "node_conv2d_1": "conv",
    "aten::empty": "other",
}


@pytest.mark.parametrize(("name", "category"), REAL_NAMES.items(), ids=range(len(REAL_NAMES)))
def test_real_kernel_names_are_classified(name: str, category: str) -> None:
    assert kernel_category(name) == category


def test_summary_is_per_forward_and_ranked() -> None:
    kernels = [KernelTime("nvjet_tst_128x64", 4.0, 8), KernelTime("softmax_warp_forward", 1.0, 4),
               KernelTime("nvjet_tst_128x64", 2.0, 4), KernelTime("mystery", 0.5, 2)]
    summary = summarize(kernels, forwards=2, source="test", unit="CUDA kernels", top=2)
    assert summary.categories_ms["GEMM"] == 3.0 and summary.categories_ms["softmax"] == 0.5
    assert summary.categories_ms["other"] == 0.25 and summary.total_ms_per_forward == 3.75
    assert summary.kernels_per_forward == 9.0
    assert [(k.name, k.ms_per_forward, k.calls_per_forward) for k in summary.top] == [
        ("nvjet_tst_128x64", 3.0, 6.0), ("softmax_warp_forward", 0.5, 2.0)]
    with pytest.raises(ValueError, match="forwards must be >= 1"):
        summarize(kernels, forwards=0, source="test", unit="x")


class LayerProfiledBackend:
    """A stand-in engine backend with the contract's profile_layers (mean ms per inference per layer)."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls = 0

    def prepare_shape(self, images: torch.Tensor) -> None: ...

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return images

    def profile_layers(self, images: torch.Tensor, iterations: int) -> list[tuple[str, float]]:
        assert iterations == 4
        return [("node_MatMul_7 + node_linear", 0.25), ("stages.0.blocks.0.attn.LevitAttention", 0.125)]


def test_engine_backends_are_profiled_by_their_layers() -> None:
    backend = LayerProfiledBackend()
    summary = profile_backend(backend, torch.zeros(1), forwards=4, warmup=2)
    assert summary.source == "tensorrt profile_layers" and backend.calls == 2  # warm-up only
    assert summary.categories_ms["GEMM"] == 0.25 and summary.categories_ms["attention"] == 0.125
    assert summary.kernels_per_forward == 2.0


def test_profile_command_on_cpu(tmp_path, capsys) -> None:
    out = tmp_path / "profile.json"
    code = main(["profile", "--variant", "128S", "--weights", "random", "--backend", "torch", "--precision", "fp32",
                 "--batch", "1", "--device", "cpu", "--forwards", "2", "--warmup", "1", "--top", "100", "--cache-dir",
                 str(tmp_path / "cache"), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "torch.profiler cpu ops" in printed and "GEMM" in printed
    result = json.loads(out.read_text())
    categories = result["categories_ms"]
    assert list(categories) == list(CATEGORIES)
    assert sum(categories.values()) == pytest.approx(result["total_ms_per_forward"])
    # 128S: 11 softmaxes per forward, and the linear layers' matmuls; both must have been seen.
    assert categories["GEMM"] > 0 and categories["softmax"] > 0 and categories["conv"] > 0
    calls = {k["name"]: k["calls_per_forward"] for k in result["top"]}
    assert calls["aten::_softmax"] == 11 and calls["aten::mkldnn_convolution"] == 4
    assert result["run"]["attention"] == "explicit" and result["forwards"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_profile_on_cuda_without_gpu_says_it_needs_one(capsys) -> None:
    assert main(["profile", "--weights", "random", "--device", "cuda"]) == 2
    assert "needs a GPU" in capsys.readouterr().err


def test_profile_refuses_a_plugin_the_backend_has_not(tmp_path, capsys) -> None:
    """`--plugin` on a backend without that choice is an error, not silently a profile of something else."""
    assert main(["profile", "--variant", "128S", "--weights", "random", "--backend", "torch", "--plugin", "softmax",
                 "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "has no plugin 'softmax'" in capsys.readouterr().err
