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

constexpr float kLog2e = 1.4426950408889634F;

//! 2^v by the hardware approximation (about 2^-22 relative), flushing results below 2^-126 to zero:
//! far below the smallest fp16 value, and without the ftz form nvcc adds a range fix of three
//! instructions per call.
__device__ __forceinline__ float exp2Approx(float v)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}

//! exp for the given output type: fp32 needs expf (about 2 ulp) to stay within 1e-6 of float64;
//! fp16 output rounds to 2^-11 anyway, so the hardware approximation is plenty. Takes the difference
//! d = x - max, rounded first: the long-row kernel merges partial sums taken against different
//! maxima, so the fused form below (whose rounding of max * log2e cancels only when one shift serves
//! the whole row) would leave each partial sum off by its own factor (2% at fp16 magnitudes of 6e4;
//! NOTES.md, run 28).
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
    return exp2Approx(d * kLog2e);
}

//! exp(x - rowMax) for every element of a row, in two steps: rowShift<T>(rowMax) once per row, then
//! expBelowShift<T>(x, shift) per element. fp16 takes one FFMA and one ex2 per element: x * log2e -
//! rowMax * log2e, fused, rounds only the per-row product rowMax * log2e, an error common to the
//! whole row that the normalisation cancels.
template <typename T>
__device__ __forceinline__ float rowShift(float rowMax);

template <>
__device__ __forceinline__ float rowShift<float>(float rowMax)
{
    return rowMax;
}

template <>
__device__ __forceinline__ float rowShift<__half>(float rowMax)
{
    return rowMax * kLog2e;
}

template <typename T>
__device__ __forceinline__ float expBelowShift(float x, float shift);

template <>
__device__ __forceinline__ float expBelowShift<float>(float x, float shift)
{
    return expf(x - shift);
}

template <>
__device__ __forceinline__ float expBelowShift<__half>(float x, float shift)
{
    return exp2Approx(fmaf(x, kLog2e, -shift));
}

//! 1 / sum for the normalisation: fp32 needs the correctly rounded division; for fp16 output the
//! hardware approximation (1 ulp) is plenty, and skips the division's range checks and slow path.
template <typename T>
__device__ __forceinline__ float reciprocalFor(float sum);

template <>
__device__ __forceinline__ float reciprocalFor<float>(float sum)
{
    return 1.0F / sum;
}

template <>
__device__ __forceinline__ float reciprocalFor<__half>(float sum)
{
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(sum));
    return r;
}

struct MaxOp
{
    __device__ __forceinline__ float operator()(float a, float b) const
    {
        return fmaxf(a, b);
    }
};

struct SumOp
{
    __device__ __forceinline__ float operator()(float a, float b) const
    {
        return a + b;
    }
};

//! Folds t[0..WIDTH) into t[0] pairwise, halving the width each step.
template <typename Op, int WIDTH, int N>
__device__ __forceinline__ float foldPairwise(float (&t)[N])
{
    if constexpr (WIDTH == 1)
    {
        return t[0];
    }
    else
    {
        constexpr int kHalf = (WIDTH + 1) / 2;
#pragma unroll
        for (int i = 0; i < WIDTH / 2; ++i)
        {
            t[i] = Op{}(t[i], t[i + kHalf]);
        }
        return foldPairwise<Op, kHalf>(t);
    }
}

//! Max or sum of one lane's values as a tree rather than a chain: log2(N) dependent steps instead of
//! N, in kernels whose time goes mostly into waiting on dependent steps.
template <typename Op, int N>
__device__ __forceinline__ float laneReduce(float const (&v)[N])
{
    float t[N];
#pragma unroll
    for (int i = 0; i < N; ++i)
    {
        t[i] = v[i];
    }
    return foldPairwise<Op, N>(t);
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
