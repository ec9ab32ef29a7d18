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

//! Which kernel computes rows of up to 1024 elements (longer rows always take the block-per-row one).
enum class SoftmaxPath : int32_t
{
    kAuto = 0,      //!< the dispatcher's choice
    kRegisters = 1, //!< each thread group loads its rows straight into registers
    kStaged = 2,    //!< a block stages whole rows through shared memory with 16-byte copies
};

//! Launch shape overrides for tuning sweeps; zero means "let the dispatcher choose".
struct SoftmaxLaunchTuning
{
    int32_t rowsPerThreadGroup{0}; //!< rows each thread group takes: 1 or 2 (registers), 1 to 8 (staged)
    int32_t warpsPerBlock{0};      //!< 1 to 8 warps per block
    int32_t lanesPerRow{0};        //!< 1, 2, 4, 8, 16 or 32 lanes share a row (must cover it)
    SoftmaxPath path{SoftmaxPath::kAuto};
    int32_t gridBlocks{0}; //!< blocks launched (grid-stride loops take the rest); 0: one pass
};

//! Softmax over the last axis of a contiguous [rows, cols] tensor: y = exp(x - max) / sum.
//!
//! Enqueues one kernel on `stream` and returns its launch status (cudaGetLastError after the
//! launch). Zero rows or zero columns launch nothing and return cudaSuccess. `x` and `y` must not
//! overlap. Accumulation is in fp32 for both element types.
cudaError_t softmaxLastAxis(void const* x, void* y, int64_t rows, int64_t cols, SoftmaxDType dtype,
    cudaStream_t stream, SoftmaxLaunchTuning tuning = {}) noexcept;

} // namespace levit_softmax
