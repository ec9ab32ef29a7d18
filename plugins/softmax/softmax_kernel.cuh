// Softmax over the last axis of a contiguous tensor, fp32 and fp16, fp32 accumulation.
//
// Two paths, chosen per call from the row length:
//  * rows of up to 1024 elements: a thread group (1..32 lanes of one warp) owns one or two rows and
//    holds them in registers, so every element is read once and written once. Groups are as narrow
//    as lets each lane hold at most 2 vectors (4 scalars), so short rows (16 or 49 elements) share a
//    warp and each lane keeps several loads in flight.
//  * longer rows: one block per row, two passes over global memory (an online max/sum pass, then
//    the normalising pass, which mostly hits L2).
// Loads and stores are vectorised up to 16 bytes when the row length and both pointers allow it.
//
// No framework includes: the TensorRT plugin and the PyTorch op both call softmaxLastAxis().
// Include this header in exactly one translation unit per library (softmax_kernel.cu does).
#pragma once

#include <cstdint>
#include <numeric>

#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include "softmax_launch.h"

namespace levit_softmax
{
namespace detail
{

constexpr int kWarpSize = 32;
constexpr int kMaxColsInRegisters = 1024; // 32 values per lane at most: no spills at 2 rows per group
constexpr int kDefaultWarpsPerBlock = 4;
// Group width: the narrowest whose lanes hold at most this many vectors of a row (scalar vectors,
// i.e. odd rows, more: their 2- or 4-byte loads carry little each).
constexpr int kTargetVecsPerLane = 2;
constexpr int kTargetScalarsPerLane = 4;
constexpr int kMaxWarpsPerBlock = 8;
constexpr int kLongRowThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20; // grid-stride loops cover any larger row count
constexpr int kChunkBytes = 16;                   // the staged path's copy unit
constexpr int kStagedDefaultWarpsPerBlock = 4;
constexpr int kStagedDefaultRowsPerGroup = 1;
constexpr int kStagedMaxRowsPerGroup = 8;
constexpr int kStagedTargetSlotsPerLane = 7;
constexpr int kStagedMaxSharedBytes = 48 * 1024; // without opting in to more per block

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

//! Rows held in registers. Block = (32, warps); each GROUP-lane group owns ROWS consecutive rows
//! per step. Lane g of a group holds vectors g, g+GROUP, g+2*GROUP, ... of its row, so each load
//! instruction of the group reads consecutive memory. Loop bounds are block-uniform, so every lane
//! reaches every shuffle; lanes past the end of a row or of the tensor compute on -inf and store
//! nothing.
template <typename T, int VEC, int GROUP, int VECS_PER_LANE, int ROWS>
__global__ void __launch_bounds__(kWarpSize* kMaxWarpsPerBlock) softmaxRowsInRegistersKernel(
    T const* __restrict__ x, T* __restrict__ y, int64_t rows, int32_t cols)
{
    static_assert(GROUP >= 1 && GROUP <= kWarpSize && (GROUP & (GROUP - 1)) == 0, "GROUP: power of two <= 32");
    constexpr int kSlots = VEC * VECS_PER_LANE;
    static_assert(kSlots * GROUP <= kMaxColsInRegisters || GROUP < kWarpSize, "row too long for registers");
    using VecT = Pack<T, VEC>;

    int const lane = static_cast<int>(threadIdx.x);
    int const laneInGroup = lane % GROUP;
    int const groupInWarp = lane / GROUP;
    int64_t const rowsPerWarp = int64_t{kWarpSize / GROUP} * ROWS;
    int64_t const rowsPerBlock = rowsPerWarp * blockDim.y;

    for (int64_t blockFirstRow = blockIdx.x * rowsPerBlock; blockFirstRow < rows;
         blockFirstRow += int64_t{gridDim.x} * rowsPerBlock)
    {
        int64_t const firstRow = blockFirstRow + threadIdx.y * rowsPerWarp + groupInWarp * ROWS;
        // Every load is issued before any is used: unconditional, with out-of-range lanes and rows
        // clamped to a valid address (row 0 of the tensor, column 0 of the row) and masked after.
        // Loads guarded by a condition and used right away tend to be issued one after another;
        // unconditional loads let every load of the row be in flight at once.
        VecT packed[ROWS][VECS_PER_LANE];
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
        {
            int64_t const row = firstRow + r;
            T const* rowIn = x + (row < rows ? row : 0) * cols;
#pragma unroll
            for (int j = 0; j < VECS_PER_LANE; ++j)
            {
                int const col = (j * GROUP + laneInGroup) * VEC;
                packed[r][j] = *reinterpret_cast<VecT const*>(rowIn + (col < cols ? col : 0));
            }
        }

        float values[ROWS][kSlots];
        float rowMax[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
        {
            bool const rowValid = firstRow + r < rows;
            rowMax[r] = -INFINITY;
#pragma unroll
            for (int j = 0; j < VECS_PER_LANE; ++j)
            {
                bool const valid = rowValid && (j * GROUP + laneInGroup) * VEC < cols;
#pragma unroll
                for (int k = 0; k < VEC; ++k)
                {
                    values[r][j * VEC + k] = valid ? toFloat(packed[r][j].v[k]) : -INFINITY;
                    rowMax[r] = fmaxf(rowMax[r], values[r][j * VEC + k]);
                }
            }
        }

        float rowSum[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
        {
            rowMax[r] = groupMax<GROUP>(rowMax[r]);
            rowSum[r] = 0.0F;
#pragma unroll
            for (int s = 0; s < kSlots; ++s)
            {
                values[r][s] = expFor<T>(values[r][s] - rowMax[r]);
                rowSum[r] += values[r][s];
            }
        }

#pragma unroll
        for (int r = 0; r < ROWS; ++r)
        {
            int64_t const row = firstRow + r;
            float const inverseSum = 1.0F / groupSum<GROUP>(rowSum[r]);
            T* rowOut = y + row * cols;
#pragma unroll
            for (int j = 0; j < VECS_PER_LANE; ++j)
            {
                int const col = (j * GROUP + laneInGroup) * VEC;
                if (row < rows && col < cols)
                {
                    VecT result;
#pragma unroll
                    for (int k = 0; k < VEC; ++k)
                    {
                        result.v[k] = fromFloat<T>(values[r][j * VEC + k] * inverseSum);
                    }
                    *reinterpret_cast<VecT*>(rowOut + col) = result;
                }
            }
        }
    }
}

//! Rows staged through shared memory, for rows whose length rules out 16-byte vectors in registers
//! (odd lengths such as 49 leave each lane 2- or 4-byte loads). A block copies a tile of whole
//! consecutive rows, a multiple of 16 bytes long, with 16-byte asynchronous copies; groups of LANES
//! lanes normalise the tile's rows in shared memory, in place; the block stores the tile in 16-byte
//! pieces. Only a tensor whose size is not a multiple of 16 bytes ends in element-wise copies.
//! Needs x and y 16-byte aligned and tileRows * cols * sizeof(T) a multiple of 16.
template <typename T, int LANES, int SLOTS>
__global__ void __launch_bounds__(kWarpSize* kMaxWarpsPerBlock) softmaxStagedRowsKernel(
    T const* __restrict__ x, T* __restrict__ y, int64_t rows, int32_t cols, int32_t tileRows)
{
    static_assert(LANES >= 1 && LANES <= kWarpSize && (LANES & (LANES - 1)) == 0, "LANES: power of two <= 32");
    constexpr int kPerChunk = kChunkBytes / static_cast<int>(sizeof(T));
    extern __shared__ uint4 tile[];
    T* const tileValues = reinterpret_cast<T*>(tile);
    int const thread = static_cast<int>(threadIdx.x);
    int const threads = static_cast<int>(blockDim.x);
    int const groups = threads / LANES;
    int const group = thread / LANES;
    int const laneInGroup = thread % LANES;

    for (int64_t firstRow = blockIdx.x * int64_t{tileRows}; firstRow < rows;
         firstRow += int64_t{gridDim.x} * tileRows)
    {
        int const tileRowCount = static_cast<int>(rows - firstRow < tileRows ? rows - firstRow : tileRows);
        int const elements = tileRowCount * cols;
        int const chunks = elements / kPerChunk;
        T const* const tileIn = x + firstRow * cols;
        T* const tileOut = y + firstRow * cols;
        for (int i = thread; i < chunks; i += threads)
        {
            __pipeline_memcpy_async(tile + i, reinterpret_cast<uint4 const*>(tileIn) + i, kChunkBytes);
        }
        __pipeline_commit();
        for (int e = chunks * kPerChunk + thread; e < elements; e += threads)
        {
            tileValues[e] = tileIn[e];
        }
        __pipeline_wait_prior(0);
        __syncthreads();

        // Rows are handed out in rounds whose bounds are block-uniform, so every lane of a group
        // reaches every shuffle; a group past the tile's last row computes on -inf and writes nothing.
        for (int roundFirstRow = 0; roundFirstRow < tileRowCount; roundFirstRow += groups)
        {
            int const row = roundFirstRow + group;
            bool const rowValid = row < tileRowCount;
            T* const rowValues = tileValues + (rowValid ? row : 0) * cols;
            float values[SLOTS];
            float rowMax = -INFINITY;
#pragma unroll
            for (int s = 0; s < SLOTS; ++s)
            {
                int const col = s * LANES + laneInGroup;
                values[s] = rowValid && col < cols ? toFloat(rowValues[col]) : -INFINITY;
                rowMax = fmaxf(rowMax, values[s]);
            }
            rowMax = groupMax<LANES>(rowMax);
            float rowSum = 0.0F;
#pragma unroll
            for (int s = 0; s < SLOTS; ++s)
            {
                values[s] = expFor<T>(values[s] - rowMax);
                rowSum += values[s];
            }
            float const inverseSum = 1.0F / groupSum<LANES>(rowSum);
#pragma unroll
            for (int s = 0; s < SLOTS; ++s)
            {
                int const col = s * LANES + laneInGroup;
                if (rowValid && col < cols)
                {
                    rowValues[col] = fromFloat<T>(values[s] * inverseSum);
                }
            }
        }
        __syncthreads();

        for (int i = thread; i < chunks; i += threads)
        {
            reinterpret_cast<uint4*>(tileOut)[i] = tile[i];
        }
        for (int e = chunks * kPerChunk + thread; e < elements; e += threads)
        {
            tileOut[e] = tileValues[e];
        }
        __syncthreads(); // the next tile overwrites shared memory
    }
}

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

#pragma unroll
        for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
        {
            float const otherMax = __shfl_xor_sync(0xffffffffu, maxValue, offset);
            float const otherSum = __shfl_xor_sync(0xffffffffu, sum, offset);
            mergeMaxSum<T>(maxValue, sum, otherMax, otherSum);
        }
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
#pragma unroll
            for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
            {
                float const otherMax = __shfl_xor_sync(0xffffffffu, maxValue, offset);
                float const otherSum = __shfl_xor_sync(0xffffffffu, sum, offset);
                mergeMaxSum<T>(maxValue, sum, otherMax, otherSum);
            }
            if (lane == 0)
            {
                rowStats[0] = maxValue;
                rowStats[1] = 1.0F / sum;
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

template <typename T, int VEC, int GROUP, int VECS_PER_LANE>
cudaError_t launchRowsInRegisters(
    T const* x, T* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    int const warps = tuning.warpsPerBlock > 0 ? tuning.warpsPerBlock : kDefaultWarpsPerBlock;
    // Two rows per group when one row gives a lane at most 16 bytes, in loads of 4 bytes or more:
    // twice the bytes in flight. Measured on an H100 (tools/softmax_gpu_check.py --sweep): fp16
    // [16,6,196,196] 5.4 us with two rows vs 5.8 with one; fp32 [64,9,49,49] 5.0 vs 5.6; but fp16
    // rows of 49 (2-byte loads, bound by load instructions) and fp32 rows of 196 ran slower with two.
    constexpr bool kTwoRows = VECS_PER_LANE * VEC * sizeof(T) <= 16 && VEC * sizeof(T) >= 4;
    int const rowsPerGroup = tuning.rowsPerThreadGroup > 0 ? tuning.rowsPerThreadGroup : (kTwoRows ? 2 : 1);
    if (warps > kMaxWarpsPerBlock || (rowsPerGroup != 1 && rowsPerGroup != 2))
    {
        return cudaErrorInvalidValue;
    }
    int64_t const rowsPerBlock = int64_t{kWarpSize / GROUP} * rowsPerGroup * warps;
    dim3 const grid = gridFor(ceilDiv(rows, rowsPerBlock), tuning);
    dim3 const block(kWarpSize, static_cast<unsigned int>(warps));
    if (rowsPerGroup == 2)
    {
        softmaxRowsInRegistersKernel<T, VEC, GROUP, VECS_PER_LANE, 2><<<grid, block, 0, stream>>>(x, y, rows, cols);
    }
    else
    {
        softmaxRowsInRegistersKernel<T, VEC, GROUP, VECS_PER_LANE, 1><<<grid, block, 0, stream>>>(x, y, rows, cols);
    }
    return cudaGetLastError();
}

//! A group of GROUP lanes per row, each lane holding the fewest vectors from the list that cover
//! the row (unused slots cost registers only, not memory traffic). Lists end where a lane would hold
//! more than 32 values.
template <typename T, int VEC, int GROUP, int VECS_PER_LANE, int... MORE>
cudaError_t launchGroupPerRow(T const* x, T* y, int64_t rows, int32_t cols, int32_t vectorsPerRow,
    SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    if constexpr (VECS_PER_LANE * VEC <= kMaxColsInRegisters / kWarpSize)
    {
        if (vectorsPerRow <= VECS_PER_LANE * GROUP)
        {
            return launchRowsInRegisters<T, VEC, GROUP, VECS_PER_LANE>(x, y, rows, cols, tuning, stream);
        }
    }
    if constexpr (sizeof...(MORE) > 0)
    {
        return launchGroupPerRow<T, VEC, GROUP, MORE...>(x, y, rows, cols, vectorsPerRow, tuning, stream);
    }
    else
    {
        return cudaErrorInvalidValue; // the row does not fit this group width
    }
}

//! Launch for an explicit group width: narrow groups put several rows in a warp, so short rows leave
//! no lane idle, and each lane keeps several loads in flight (a warp per 49-element row left half its
//! lanes with one 2-byte load).
template <typename T, int VEC>
cudaError_t launchForGroupWidth(T const* x, T* y, int64_t rows, int32_t cols, int32_t vectorsPerRow,
    int32_t group, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    switch (group)
    {
    case 1: return launchGroupPerRow<T, VEC, 1, 1, 2, 3, 4>(x, y, rows, cols, vectorsPerRow, tuning, stream);
    case 2: return launchGroupPerRow<T, VEC, 2, 1, 2, 3, 4>(x, y, rows, cols, vectorsPerRow, tuning, stream);
    case 4: return launchGroupPerRow<T, VEC, 4, 1, 2, 3, 4>(x, y, rows, cols, vectorsPerRow, tuning, stream);
    case 8: return launchGroupPerRow<T, VEC, 8, 1, 2, 3, 4>(x, y, rows, cols, vectorsPerRow, tuning, stream);
    case 16: return launchGroupPerRow<T, VEC, 16, 1, 2, 3, 4>(x, y, rows, cols, vectorsPerRow, tuning, stream);
    case kWarpSize:
        return launchGroupPerRow<T, VEC, kWarpSize, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32>(
            x, y, rows, cols, vectorsPerRow, tuning, stream);
    default: return cudaErrorInvalidValue;
    }
}

template <typename T, int VEC>
cudaError_t launchForVectorWidth(
    T const* x, T* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    if (cols > kMaxColsInRegisters)
    {
        softmaxLongRowsKernel<T, VEC, kLongRowThreads>
            <<<gridFor(rows, tuning), kLongRowThreads, 0, stream>>>(x, y, rows, cols);
        return cudaGetLastError();
    }
    int32_t const vectorsPerRow = cols / VEC;
    int32_t group = tuning.lanesPerRow;
    if (group == 0)
    {
        int const target = VEC == 1 ? kTargetScalarsPerLane : kTargetVecsPerLane;
        group = 1;
        while (group < kWarpSize && vectorsPerRow > group * target)
        {
            group *= 2;
        }
    }
    return launchForGroupWidth<T, VEC>(x, y, rows, cols, vectorsPerRow, group, tuning, stream);
}

template <typename T, int LANES, int SLOTS>
cudaError_t launchStagedRows(
    T const* x, T* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    int const warps = tuning.warpsPerBlock > 0 ? tuning.warpsPerBlock : kStagedDefaultWarpsPerBlock;
    int const rowsPerGroup
        = tuning.rowsPerThreadGroup > 0 ? tuning.rowsPerThreadGroup : kStagedDefaultRowsPerGroup;
    if (warps > kMaxWarpsPerBlock || rowsPerGroup > kStagedMaxRowsPerGroup)
    {
        return cudaErrorInvalidValue;
    }
    int const threads = warps * kWarpSize;
    // Each group gets rowsPerGroup rows of a tile, rounded up to whole 16-byte chunks.
    int64_t const rowBytes = int64_t{cols} * static_cast<int64_t>(sizeof(T));
    int64_t const rowsPerWholeChunks = kChunkBytes / std::gcd(rowBytes, int64_t{kChunkBytes});
    int64_t const tileRows = ceilDiv(int64_t{threads / LANES} * rowsPerGroup, rowsPerWholeChunks) * rowsPerWholeChunks;
    int64_t const sharedBytes = tileRows * rowBytes;
    if (sharedBytes > kStagedMaxSharedBytes)
    {
        return cudaErrorInvalidValue;
    }
    softmaxStagedRowsKernel<T, LANES, SLOTS><<<gridFor(ceilDiv(rows, tileRows), tuning), threads,
        static_cast<size_t>(sharedBytes), stream>>>(x, y, rows, cols, static_cast<int32_t>(tileRows));
    return cudaGetLastError();
}

//! The staged kernel with the fewest values per lane from the list that cover the row.
template <typename T, int LANES, int SLOTS, int... MORE>
cudaError_t launchStagedForSlots(
    T const* x, T* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    if (cols <= SLOTS * LANES)
    {
        return launchStagedRows<T, LANES, SLOTS>(x, y, rows, cols, tuning, stream);
    }
    if constexpr (sizeof...(MORE) > 0)
    {
        return launchStagedForSlots<T, LANES, MORE...>(x, y, rows, cols, tuning, stream);
    }
    else
    {
        return cudaErrorInvalidValue; // the row does not fit this group width
    }
}

//! Staged path: groups as narrow as keep a lane at most kStagedTargetSlotsPerLane values.
template <typename T>
cudaError_t launchStaged(
    T const* x, T* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    int lanes = tuning.lanesPerRow;
    if (lanes == 0)
    {
        lanes = 1;
        while (lanes < kWarpSize && cols > lanes * kStagedTargetSlotsPerLane)
        {
            lanes *= 2;
        }
    }
    switch (lanes)
    {
    case 1: return launchStagedForSlots<T, 1, 2, 4, 7, 13, 25, 49>(x, y, rows, cols, tuning, stream);
    case 2: return launchStagedForSlots<T, 2, 2, 4, 7, 13, 25, 49>(x, y, rows, cols, tuning, stream);
    case 4: return launchStagedForSlots<T, 4, 2, 4, 7, 13, 25, 49>(x, y, rows, cols, tuning, stream);
    case 8: return launchStagedForSlots<T, 8, 2, 4, 7, 13, 25, 49>(x, y, rows, cols, tuning, stream);
    case 16: return launchStagedForSlots<T, 16, 2, 4, 7, 13, 25, 49>(x, y, rows, cols, tuning, stream);
    case kWarpSize: return launchStagedForSlots<T, kWarpSize, 2, 4, 7, 13, 25, 32>(x, y, rows, cols, tuning, stream);
    default: return cudaErrorInvalidValue;
    }
}

//! Widest vector (at most 16 bytes) that divides the row length and suits both pointers.
template <typename T>
int vectorWidthFor(void const* x, void const* y, int64_t cols)
{
    int width = static_cast<int>(16 / sizeof(T));
    auto const misaligned = [](void const* p, int bytes) {
        return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) != 0;
    };
    while (width > 1
        && (cols % width != 0 || misaligned(x, width * static_cast<int>(sizeof(T)))
            || misaligned(y, width * static_cast<int>(sizeof(T)))))
    {
        width /= 2;
    }
    return width;
}

template <typename T>
cudaError_t launchForType(
    void const* x, void* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
    T const* in = static_cast<T const*>(x);
    T* out = static_cast<T*>(y);
    if (tuning.path == SoftmaxPath::kStaged)
    {
        auto const misaligned = [](void const* p) { return reinterpret_cast<uintptr_t>(p) % kChunkBytes != 0; };
        if (cols > kMaxColsInRegisters || misaligned(x) || misaligned(y))
        {
            return cudaErrorInvalidValue;
        }
        return launchStaged<T>(in, out, rows, cols, tuning, stream);
    }
    switch (vectorWidthFor<T>(x, y, cols))
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
