// Host-side declaration of the softmax launch function, for bindings compiled by a plain C++
// compiler (the TensorRT plugin, the PyTorch op). The definition and the kernels live in
// softmax_kernel.cuh, which is compiled once, by nvcc, in softmax_kernel.cu.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace levit_softmax
{

//! Element types the kernels accept; input and output always have the same type.
enum class SoftmaxDType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
};

//! Launch shape overrides for tuning sweeps; zero means "let the dispatcher choose".
struct SoftmaxLaunchTuning
{
    int32_t rowsPerThreadGroup{0}; //!< 1 or 2 rows held at once by each thread group (register path)
    int32_t warpsPerBlock{0};      //!< 1 to 8 warps per block (register path)
    int32_t lanesPerRow{0};        //!< 1, 2, 4, 8, 16 or 32 lanes share a row (must cover it)
};

//! Softmax over the last axis of a contiguous [rows, cols] tensor: y = exp(x - max) / sum.
//!
//! Enqueues one kernel on `stream` and returns its launch status (cudaGetLastError after the
//! launch). Zero rows or zero columns launch nothing and return cudaSuccess. `x` and `y` must not
//! overlap. Accumulation is in fp32 for both element types.
cudaError_t softmaxLastAxis(void const* x, void* y, int64_t rows, int64_t cols, SoftmaxDType dtype,
    cudaStream_t stream, SoftmaxLaunchTuning tuning = {}) noexcept;

} // namespace levit_softmax
