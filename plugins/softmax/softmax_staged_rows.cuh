// Rows staged through shared memory: for rows whose length rules out 16-byte vectors in registers.
#pragma once

#include <cstdint>
#include <numeric>

#include <cuda_pipeline.h>

#include "softmax_device_common.cuh"

namespace levit_softmax
{
namespace detail
{

constexpr int kStagedDefaultWarpsPerBlock = 4;
constexpr int kStagedDefaultRowsPerGroup = 1;
constexpr int kStagedMaxRowsPerGroup = 8;
constexpr int kStagedTargetSlotsPerLane = 7;
constexpr int kStagedMaxSharedBytes = 48 * 1024; // without opting in to more per block

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
            float const shift = rowShift<T>(groupMax<LANES>(rowMax));
            float rowSum = 0.0F;
#pragma unroll
            for (int s = 0; s < SLOTS; ++s)
            {
                values[s] = expBelowShift<T>(values[s], shift);
                rowSum += values[s];
            }
            float const inverseSum = reciprocalFor<T>(groupSum<LANES>(rowSum));
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

} // namespace detail
} // namespace levit_softmax
