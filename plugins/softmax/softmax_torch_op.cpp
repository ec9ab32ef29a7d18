// PyTorch binding of the softmax kernel: the operator levit_trt::softmax(Tensor x) -> Tensor,
// softmax over the last axis, and its out= overload (tests poison `out` before the kernel writes
// it). A CUDA kernel for real tensors, a Meta kernel so that FakeTensor
// (torch.compile, torch.export) knows the output without running anything, and a CPU kernel that
// only says that CPU tensors are not supported. Loaded from Python with torch.ops.load_library.
#include <cstdint>
#include <limits>
#include <string>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "shape_text.h"
#include "softmax_launch.h"

namespace
{

using levit_softmax::SoftmaxDType;
using levit_softmax::SoftmaxLaunchTuning;
using levit_plugins::shapeText;

void checkSupported(at::Tensor const& x)
{
    TORCH_CHECK(x.dim() >= 1, "levit_trt::softmax: needs a tensor of rank >= 1 (softmax over the last axis); "
                              "got a 0-dim tensor");
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf,
        "levit_trt::softmax: supports float32 and float16 only; got ", x.scalar_type(),
        " (convert with .float() or .half(), or use torch.softmax)");
}

//! Checks `out` can take softmax(x) and writes it there; `x` is already contiguous.
void softmaxInto(at::Tensor const& x, at::Tensor& out, SoftmaxLaunchTuning tuning)
{
    TORCH_CHECK(out.device() == x.device() && out.scalar_type() == x.scalar_type() && out.sizes() == x.sizes(),
        "levit_trt::softmax: out must match the input's device, dtype and shape; got out ", out.device(), " ",
        out.scalar_type(), " ", shapeText(out.sizes()), " for input ", x.device(), " ", x.scalar_type(), " ",
        shapeText(x.sizes()));
    TORCH_CHECK(out.is_contiguous(), "levit_trt::softmax: out must be contiguous");
    if (x.numel() == 0)
    {
        return;
    }
    at::assert_no_overlap(out, x);
    int64_t const cols = x.size(-1);
    TORCH_CHECK(cols <= std::numeric_limits<int32_t>::max(), "levit_trt::softmax: last axis of ",
        std::to_string(cols), " elements is longer than the kernel supports (2^31 - 1)");
    int64_t const rows = x.numel() / cols;
    SoftmaxDType const dtype = x.scalar_type() == at::kHalf ? SoftmaxDType::kFloat16 : SoftmaxDType::kFloat32;
    cudaStream_t const stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
    cudaError_t const status = levit_softmax::softmaxLastAxis(
        x.const_data_ptr(), out.mutable_data_ptr(), rows, cols, dtype, stream, tuning);
    TORCH_CHECK(status == cudaSuccess, "levit_trt::softmax: kernel launch failed for shape ", shapeText(x.sizes()),
        ": ", cudaGetErrorString(status));
}

at::Tensor contiguousCudaInput(at::Tensor const& x)
{
    checkSupported(x);
    TORCH_CHECK(x.is_cuda(), "levit_trt::softmax: the CUDA kernel got a tensor on ", x.device());
    return x.contiguous(); // strided inputs are copied once, then read densely
}

at::Tensor softmax(at::Tensor const& x)
{
    c10::cuda::CUDAGuard const deviceGuard(x.device());
    at::Tensor const input = contiguousCudaInput(x);
    at::Tensor output = at::empty_like(input, at::MemoryFormat::Contiguous);
    softmaxInto(input, output, SoftmaxLaunchTuning{});
    return output;
}

at::Tensor& softmaxOut(at::Tensor const& x, at::Tensor& out)
{
    c10::cuda::CUDAGuard const deviceGuard(x.device());
    softmaxInto(contiguousCudaInput(x), out, SoftmaxLaunchTuning{});
    return out;
}

//! softmax.out with the kernel and its launch shape forced (0 = the dispatcher's choice); for the
//! tuning sweep of tools/softmax_gpu_check.py. A shape whose lanes cannot cover the row is an error.
void softmaxTuned(at::Tensor const& x, at::Tensor& out, int64_t rowsPerThreadGroup, int64_t warpsPerBlock,
    int64_t lanesPerRow, int64_t path, int64_t gridBlocks)
{
    TORCH_CHECK(rowsPerThreadGroup >= 0 && rowsPerThreadGroup <= 8 && warpsPerBlock >= 0 && warpsPerBlock <= 8
            && lanesPerRow >= 0 && lanesPerRow <= 32 && path >= 0 && path <= 2 && gridBlocks >= 0
            && gridBlocks <= std::numeric_limits<int32_t>::max(),
        "levit_trt::softmax_tuned: rows_per_thread_group must be 0..8, warps_per_block 0..8, lanes_per_row "
        "0..32, path 0..2 (auto, registers, staged) and grid_blocks >= 0 (0 = default)");
    SoftmaxLaunchTuning tuning;
    tuning.rowsPerThreadGroup = static_cast<int32_t>(rowsPerThreadGroup);
    tuning.warpsPerBlock = static_cast<int32_t>(warpsPerBlock);
    tuning.lanesPerRow = static_cast<int32_t>(lanesPerRow);
    tuning.path = static_cast<levit_softmax::SoftmaxPath>(path);
    tuning.gridBlocks = static_cast<int32_t>(gridBlocks);
    c10::cuda::CUDAGuard const deviceGuard(x.device());
    softmaxInto(contiguousCudaInput(x), out, tuning);
}

at::Tensor softmaxMeta(at::Tensor const& x)
{
    checkSupported(x);
    return at::empty_like(x, at::MemoryFormat::Contiguous);
}

at::Tensor softmaxCpu(at::Tensor const& x)
{
    TORCH_CHECK(false, "levit_trt::softmax runs on CUDA tensors only; got a tensor on ", x.device(),
        " (move it with .cuda(), or use torch.softmax on the CPU)");
}

} // namespace

TORCH_LIBRARY(levit_trt, m)
{
    m.def("softmax(Tensor x) -> Tensor");
    m.def("softmax.out(Tensor x, *, Tensor(a!) out) -> Tensor(a!)");
    m.def("softmax_tuned(Tensor x, Tensor(a!) out, int rows_per_thread_group, int warps_per_block, "
          "int lanes_per_row, int path=0, int grid_blocks=0) -> ()");
}

TORCH_LIBRARY_IMPL(levit_trt, CUDA, m)
{
    m.impl("softmax", &softmax);
    m.impl("softmax.out", &softmaxOut);
    m.impl("softmax_tuned", &softmaxTuned);
}

TORCH_LIBRARY_IMPL(levit_trt, Meta, m)
{
    m.impl("softmax", &softmaxMeta);
}

TORCH_LIBRARY_IMPL(levit_trt, CPU, m)
{
    m.impl("softmax", &softmaxCpu);
}
