// Rows longer than 1024 elements: one block per row, two passes over global memory (an online
// max/sum pass, then the normalising pass, which mostly hits L2).
#pragma once

#include <cstdint>

#include "softmax_device_common.cuh"

namespace levit_softmax
{
namespace detail
{

constexpr int kLongRowThreads = 256;

//! Merges a running (max, sum of exp(x - max)) pair with another; -inf maxima carry no mass.
template <typename T>
__device__ __forceinline__ void mergeMaxSum(float& maxValue, float& sum, float otherMax, float otherSum)
{
    float const merged = fmaxf(maxValue, otherMax);
    if (merged == -INFINITY)
    {
        return; // both empty so far (or all -inf): sum stays 0
    }
    sum = sum * expFor<T>(maxValue - merged) + otherSum * expFor<T>(otherMax - merged);
    maxValue = merged;
}

//! Merges the (max, sum) pairs of a warp's 32 lanes; every lane ends with the warp's pair.
template <typename T>
__device__ __forceinline__ void warpMergeMaxSum(float& maxValue, float& sum)
{
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    {
        float const otherMax = __shfl_xor_sync(0xffffffffu, maxValue, offset);
        float const otherSum = __shfl_xor_sync(0xffffffffu, sum, offset);
        mergeMaxSum<T>(maxValue, sum, otherMax, otherSum);
    }
}

//! One block per row for rows longer than kMaxColsInRegisters: an online max/sum pass, a block
//! reduction through shared memory, then a pass that reads the row again and writes the output.
template <typename T, int VEC, int THREADS>
__global__ void __launch_bounds__(THREADS) softmaxLongRowsKernel(
    T const* __restrict__ x, T* __restrict__ y, int64_t rows, int32_t cols)
{
    static_assert(THREADS % kWarpSize == 0 && THREADS <= 1024, "THREADS: whole warps, at most 1024");
    constexpr int kWarps = THREADS / kWarpSize;
    using VecT = Pack<T, VEC>;
    __shared__ float warpMax[kWarps];
    __shared__ float warpSum[kWarps];
    __shared__ float rowStats[2];

    int const vectorsPerRow = cols / VEC;
    int const lane = static_cast<int>(threadIdx.x) % kWarpSize;
    int const warp = static_cast<int>(threadIdx.x) / kWarpSize;

    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x)
    {
        VecT const* rowIn = reinterpret_cast<VecT const*>(x + row * cols);
        VecT* rowOut = reinterpret_cast<VecT*>(y + row * cols);

        float maxValue = -INFINITY;
        float sum = 0.0F;
        for (int64_t i = threadIdx.x; i < vectorsPerRow; i += THREADS)
        {
            VecT const packed = rowIn[i];
            float packMax = -INFINITY;
#pragma unroll
            for (int k = 0; k < VEC; ++k)
            {
                packMax = fmaxf(packMax, toFloat(packed.v[k]));
            }
            float packSum = 0.0F;
            if (packMax != -INFINITY)
            {
#pragma unroll
                for (int k = 0; k < VEC; ++k)
                {
                    packSum += expFor<T>(toFloat(packed.v[k]) - packMax);
                }
            }
            mergeMaxSum<T>(maxValue, sum, packMax, packSum);
        }

        warpMergeMaxSum<T>(maxValue, sum);
        if (lane == 0)
        {
            warpMax[warp] = maxValue;
            warpSum[warp] = sum;
        }
        __syncthreads();
        if (warp == 0)
        {
            maxValue = lane < kWarps ? warpMax[lane] : -INFINITY;
            sum = lane < kWarps ? warpSum[lane] : 0.0F;
            warpMergeMaxSum<T>(maxValue, sum);
            if (lane == 0)
            {
                rowStats[0] = maxValue;
                rowStats[1] = reciprocalFor<T>(sum);
            }
        }
        __syncthreads();
        float const rowMax = rowStats[0];
        float const inverseSum = rowStats[1];

        for (int64_t i = threadIdx.x; i < vectorsPerRow; i += THREADS)
        {
            VecT const packed = rowIn[i];
            VecT result;
#pragma unroll
            for (int k = 0; k < VEC; ++k)
            {
                result.v[k] = fromFloat<T>(expFor<T>(toFloat(packed.v[k]) - rowMax) * inverseSum);
            }
            rowOut[i] = result;
        }
        __syncthreads(); // rowStats and the warp partials are reused by the next row
    }
}

template <typename T, int VEC>
cudaError_t launchLongRows(
    T const* x, T* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    softmaxLongRowsKernel<T, VEC, kLongRowThreads>
        <<<gridFor(rows, tuning), kLongRowThreads, 0, stream>>>(x, y, rows, cols);
    return cudaGetLastError();
}

} // namespace detail
} // namespace levit_softmax
