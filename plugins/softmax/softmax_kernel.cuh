// Softmax over the last axis of a contiguous tensor, fp32 and fp16, fp32 accumulation.
//
// Three kernels, chosen per call:
//  * rows of up to 1024 elements, held in registers (softmax_rows_in_registers.cuh): a thread group
//    of 1..32 lanes owns one or two rows, loading them in vectors of up to 16 bytes;
//  * rows of up to 1024 elements whose length is odd (49 keys: each lane would load 2 or 4 bytes at
//    a time), in tensors with more rows than half (fp16) or all (fp32) of the warps the GPU keeps
//    resident: whole-row tiles staged through shared memory with 16-byte copies
//    (softmax_staged_rows.cuh);
//  * longer rows: one block per row, two passes (softmax_long_rows.cuh).
// The choice and the defaults come from sweeps on an H100 (tools/softmax_gpu_check.py --sweep;
// NOTES.md).
//
// No framework includes: the TensorRT plugin and the PyTorch op both call softmaxLastAxis().
// Include this header in exactly one translation unit per library (softmax_kernel.cu does).
#pragma once

#include <atomic>
#include <cstdint>

#include <cuda_runtime.h>

#include "softmax_device_common.cuh"
#include "softmax_launch.h"
#include "softmax_long_rows.cuh"
#include "softmax_rows_in_registers.cuh"
#include "softmax_staged_rows.cuh"

namespace levit_softmax
{
namespace detail
{

// Odd rows in a small tensor take the register path, one row per thread group: the shortest chain of
// dependent steps per row. Small: at most half as many rows as the GPU keeps warps resident (fp16),
// as many (fp32, whose staged tiles gain less). fp16 takes a warp per row, fp32 groups as narrow as
// keep 4 values a lane. Measured on an H100 (8448 resident warps; tools/softmax_dispatch_sweep.py,
// us per call, chosen shape / staged / torch.softmax): fp16 [16,5,49,49] (3920 rows) 2.02 / 1.97 /
// 2.15 and [16,6,49,49] 2.12 / 2.00 / 2.22; fp32 [16,6,49,49] 2.17 / 2.30 / 2.24, [16,9,49,49]
// (7056 rows) 2.41 / 2.49 / 2.51 (a warp per row: 2.67) and [16,12,49,49] (9408 rows, staged) 2.68 /
// 2.63 / 2.78.
template <typename T>
int64_t smallTensorRows(int64_t residentWarps)
{
    return sizeof(T) == 2 ? residentWarps / 2 : residentWarps;
}

constexpr int kSmallTensorRowsPerGroup = 1;
constexpr int kMaxCachedDevices = 64;

inline bool alignedTo(void const* p, int bytes)
{
    return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

//! Widest vector (at most 16 bytes) that divides the row length and suits both pointers.
template <typename T>
int vectorWidthFor(void const* x, void const* y, int64_t cols)
{
    int width = static_cast<int>(kChunkBytes / sizeof(T));
    while (width > 1
        && (cols % width != 0 || !alignedTo(x, width * static_cast<int>(sizeof(T)))
            || !alignedTo(y, width * static_cast<int>(sizeof(T)))))
    {
        width /= 2;
    }
    return width;
}

//! Warps the current device keeps resident at full occupancy (SMs x threads per SM / 32), queried
//! once per device; 0 if the runtime cannot say (the dispatcher then treats every tensor as large).
inline int64_t residentWarpsOfCurrentDevice()
{
    static std::atomic<int64_t> cached[kMaxCachedDevices]{};
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxCachedDevices)
    {
        return 0;
    }
    int64_t warps = cached[device].load(std::memory_order_relaxed);
    if (warps == 0)
    {
        int sms = 0;
        int threadsPerSm = 0;
        if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess
            || cudaDeviceGetAttribute(&threadsPerSm, cudaDevAttrMaxThreadsPerMultiProcessor, device) != cudaSuccess)
        {
            return 0;
        }
        warps = int64_t{sms} * threadsPerSm / kWarpSize;
        cached[device].store(warps, std::memory_order_relaxed);
    }
    return warps;
}

template <typename T, int VEC>
cudaError_t launchForVectorWidth(
    T const* x, T* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    if (cols > kMaxColsInRegisters)
    {
        return launchLongRows<T, VEC>(x, y, rows, cols, tuning, stream);
    }
    return launchRowsInRegisters<T, VEC>(x, y, rows, cols, tuning, stream);
}

//! Fills the launch-shape fields tuning leaves at 0 with the shape for odd rows in small tensors: one
//! row per group; fp16 a warp per row in blocks of 8 warps, fp32 the register path's group width in
//! blocks of 4.
template <typename T>
SoftmaxLaunchTuning withSmallTensorDefaults(SoftmaxLaunchTuning tuning)
{
    bool const half = sizeof(T) == 2;
    tuning.lanesPerRow = tuning.lanesPerRow > 0 ? tuning.lanesPerRow : (half ? kWarpSize : 0);
    tuning.rowsPerThreadGroup = tuning.rowsPerThreadGroup > 0 ? tuning.rowsPerThreadGroup : kSmallTensorRowsPerGroup;
    tuning.warpsPerBlock = tuning.warpsPerBlock > 0 ? tuning.warpsPerBlock : (half ? kMaxWarpsPerBlock : kDefaultWarpsPerBlock);
    return tuning;
}

template <typename T>
cudaError_t launchForType(
    void const* x, void* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    T const* in = static_cast<T const*>(x);
    T* out = static_cast<T*>(y);
    bool const stageable = cols <= kMaxColsInRegisters && alignedTo(x, kChunkBytes) && alignedTo(y, kChunkBytes);
    if (tuning.path == SoftmaxPath::kStaged)
    {
        return stageable ? launchStaged<T>(in, out, rows, cols, tuning, stream) : cudaErrorInvalidValue;
    }
    int const width = vectorWidthFor<T>(x, y, cols);
    if (tuning.path == SoftmaxPath::kAuto && width == 1 && cols <= kMaxColsInRegisters)
    {
        if (rows <= smallTensorRows<T>(residentWarpsOfCurrentDevice()))
        {
            tuning = withSmallTensorDefaults<T>(tuning);
        }
        else if (stageable)
        {
            return launchStaged<T>(in, out, rows, cols, tuning, stream);
        }
    }
    switch (width)
    {
    case 8:
        if constexpr (sizeof(T) <= 2)
        {
            return launchForVectorWidth<T, 8>(in, out, rows, cols, tuning, stream);
        }
        break;
    case 4: return launchForVectorWidth<T, 4>(in, out, rows, cols, tuning, stream);
    case 2: return launchForVectorWidth<T, 2>(in, out, rows, cols, tuning, stream);
    default: return launchForVectorWidth<T, 1>(in, out, rows, cols, tuning, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace detail

cudaError_t softmaxLastAxis(void const* x, void* y, int64_t rows, int64_t cols, SoftmaxDType dtype,
    cudaStream_t stream, SoftmaxLaunchTuning tuning) noexcept
{
    if (rows < 0 || cols < 0 || cols > INT32_MAX)
    {
        return cudaErrorInvalidValue;
    }
    if (rows == 0 || cols == 0)
    {
        return cudaSuccess; // nothing to compute: no launch
    }
    if (x == nullptr || y == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    auto const cols32 = static_cast<int32_t>(cols);
    switch (dtype)
    {
    case SoftmaxDType::kFloat32: return detail::launchForType<float>(x, y, rows, cols32, tuning, stream);
    case SoftmaxDType::kFloat16: return detail::launchForType<__half>(x, y, rows, cols32, tuning, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace levit_softmax
