// Rows of up to 1024 elements held in registers: a thread group (1..32 lanes of one warp) owns one
// or two rows, so every element is read once and written once, in vectors of up to 16 bytes.
#pragma once

#include <cstdint>

#include "softmax_device_common.cuh"

namespace levit_softmax
{
namespace detail
{

constexpr int kDefaultWarpsPerBlock = 4;
// Group width: the narrowest whose lanes hold at most this many vectors of a row (scalar vectors,
// i.e. odd rows, more: their 2- or 4-byte loads carry little each).
constexpr int kTargetVecsPerLane = 2;
constexpr int kTargetScalarsPerLane = 4;

//! Rows held in registers. Block = (32, warps); each GROUP-lane group owns ROWS consecutive rows
//! per step. Lane g of a group holds vectors g, g+GROUP, g+2*GROUP, ... of its row, so each load
//! instruction of the group reads consecutive memory. Loop bounds are block-uniform, so every lane
//! reaches every shuffle; lanes past the end of a row or of the tensor compute on copies of valid
//! elements, kept out of the sum, and store nothing.
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

        // Slots past the end of a row hold a copy of the row's first vector (the clamped load), which
        // cannot change its maximum; rows past the end of the tensor hold row 0 and are not stored.
        // So no per-element masking here: the exp step below gives such slots a shift of +inf
        // instead, one select per vector, and exp(-inf) = 0 keeps them out of the sum.
        float values[ROWS][kSlots];
        float rowMax[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
        {
#pragma unroll
            for (int s = 0; s < kSlots; ++s)
            {
                values[r][s] = toFloat(packed[r][s / VEC].v[s % VEC]);
            }
            rowMax[r] = laneReduce<MaxOp>(values[r]);
        }

        float rowSum[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
        {
            float const shift = rowShift<T>(groupMax<GROUP>(rowMax[r]));
#pragma unroll
            for (int j = 0; j < VECS_PER_LANE; ++j)
            {
                float const slotShift = (j * GROUP + laneInGroup) * VEC < cols ? shift : INFINITY;
#pragma unroll
                for (int k = 0; k < VEC; ++k)
                {
                    values[r][j * VEC + k] = expBelowShift<T>(values[r][j * VEC + k], slotShift);
                }
            }
            rowSum[r] = laneReduce<SumOp>(values[r]);
        }

#pragma unroll
        for (int r = 0; r < ROWS; ++r)
        {
            int64_t const row = firstRow + r;
            float const inverseSum = reciprocalFor<T>(groupSum<GROUP>(rowSum[r]));
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

//! One launch of the kernel above: GROUP lanes per row, each holding VECS_PER_LANE vectors.
template <typename T, int VEC, int GROUP, int VECS_PER_LANE>
cudaError_t launchGroupsOfRows(
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
            return launchGroupsOfRows<T, VEC, GROUP, VECS_PER_LANE>(x, y, rows, cols, tuning, stream);
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

//! The register path for rows of VEC-element vectors: groups as narrow as keep each lane at
//! kTargetVecsPerLane vectors (kTargetScalarsPerLane for scalars), unless tuning names the width.
template <typename T, int VEC>
cudaError_t launchRowsInRegisters(
    T const* x, T* y, int64_t rows, int32_t cols, SoftmaxLaunchTuning tuning, cudaStream_t stream)
{
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

} // namespace detail
} // namespace levit_softmax
