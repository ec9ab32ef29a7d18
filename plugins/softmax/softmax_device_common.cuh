// Device helpers and launch constants shared by the softmax kernels (see softmax_kernel.cuh).
#pragma once

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "softmax_launch.h"

namespace levit_softmax
{
namespace detail
{

constexpr int kWarpSize = 32;
constexpr int kMaxColsInRegisters = 1024; // 32 values per lane at most: no spills at 2 rows per group
constexpr int kMaxWarpsPerBlock = 8;
constexpr int64_t kMaxBlocks = int64_t{1} << 20; // grid-stride loops cover any larger row count
constexpr int kChunkBytes = 16;                   // the widest load or store

//! A vector of N elements, aligned so that one load or store moves it (up to 16 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack
{
    T v[N];
};

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}

__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);

template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}

template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

//! exp for the given output type: fp32 needs expf (about 2 ulp) to stay within 1e-6 of float64;
//! fp16 output rounds to 2^-11 anyway, so the hardware approximation (about 2^-21) is plenty.
template <typename T>
__device__ __forceinline__ float expFor(float d);

template <>
__device__ __forceinline__ float expFor<float>(float d)
{
    return expf(d);
}

template <>
__device__ __forceinline__ float expFor<__half>(float d)
{
    return __expf(d);
}

template <int GROUP>
__device__ __forceinline__ float groupMax(float v)
{
#pragma unroll
    for (int offset = GROUP / 2; offset > 0; offset /= 2)
    {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

template <int GROUP>
__device__ __forceinline__ float groupSum(float v)
{
#pragma unroll
    for (int offset = GROUP / 2; offset > 0; offset /= 2)
    {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

inline int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

//! Blocks to launch for `units` blocks' worth of work: all of them, unless tuning caps the grid.
inline dim3 gridFor(int64_t units, SoftmaxLaunchTuning tuning)
{
    int64_t const cap = tuning.gridBlocks > 0 ? tuning.gridBlocks : kMaxBlocks;
    return dim3(static_cast<unsigned int>(units < cap ? units : cap));
}

} // namespace detail
} // namespace levit_softmax
