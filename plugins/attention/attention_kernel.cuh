// Fused LeViT attention, softmax(q k^T * scale + bias) v, fp16 and fp32, fp32 accumulation.
//
// One CTA per (query tile group, head and value-column slice, batch) stages K and its slice of V of
// its (batch, head) whole in shared memory with 16-byte cp.async copies (pad rows up to a multiple
// of 16 keys zero-filled), read through q/k/v's own strides, so the kernel reads them where the
// qkv / kv and q projections wrote them. Several CTAs share a (batch, head) over its query tiles, so
// that batch 1 still spreads over the GPU; tiles are dealt to the CTAs round-robin (tile =
// blockIdx.x + warp * gridDim.x). A slice (the kernels' kValueDim) is the whole value head or a part
// of it: CTAs of one head's slices each repeat q.k and the softmax and stage a part of V.
//
// fp16 (tensor cores, mma.sync m16n8k16 with fp32 accumulators): a warp owns 16 query rows and
// holds their whole score row in registers (196 keys: 13 key tiles of 16, 26 accumulator tiles of
// n8). Q's A fragments come straight from global memory; K's B fragments through ldmatrix, V's
// through ldmatrix.trans. Scores are scaled, biased and exponentiated in registers (exp2 of the
// score times log2(e)), pad keys masked to -inf; the accumulators then convert to fp16 and are
// the A fragments of the P.V product as they stand (the m16n8 C layout of two adjacent n8 tiles is
// the m16k16 A layout), FlashAttention-2 style. The row sum stays in fp32 and divides O at the end.
// fp32: the same structure on the SIMT units (plain fp32 FMA, not TF32: TF32's 10-bit mantissa
// would miss the fp32 tolerance): a warp takes its 16 rows 4 at a time, each lane 1/32 of the keys
// for q.k and 1/32 of the slice's value columns for P.V, the probabilities passed through shared memory.
//
// No framework includes: the TensorRT plugin and the PyTorch op both call attentionForward().
// Include this header in exactly one translation unit per library (attention_kernel.cu does).
#pragma once

#include <atomic>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention_launch.h"

namespace levit_attention
{
namespace detail
{

constexpr int kRowsPerWarp = 16;   // one m16 tile of queries per warp
constexpr int kMaxWarpsPerCta = 4; // the dispatcher's largest CTA
constexpr int kFloatRowsPerPass = 4; // fp32: rows a warp computes together (reuses each K/V read 4 times)
constexpr float kLog2e = 1.4426950408889634F;
constexpr int kChunkBytes = 16;

__device__ __forceinline__ uint32_t sharedAddress(void const* pointer)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

//! 16 bytes global -> shared (a shared-window address), asynchronous, of which the first `bytes` (0 to 16)
//! are read and the rest zero-filled.
__device__ __forceinline__ void copyChunkAsync(uint32_t sharedDst, void const* globalSrc, int bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sharedDst), "l"(globalSrc), "r"(bytes));
}

__device__ __forceinline__ void commitCopies()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int kPendingGroups>
__device__ __forceinline__ void waitCopies()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPendingGroups));
}

__device__ __forceinline__ void loadMatrices(uint32_t (&r)[4], uint32_t address)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

__device__ __forceinline__ void loadMatricesTransposed(uint32_t (&r)[4], uint32_t address)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

//! d += a (16x16, row-major fp16) * b (16x8, column-major fp16), fp32 accumulators.
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

//! A kernel's epilogue on one output value; a template parameter, so that the kernels without one
//! are the same code as before it existed (run 12: a runtime branch, with a division by 6, slowed
//! every launch, taken or not).
template <AttentionEpilogue kEpilogue>
__device__ __forceinline__ float applyEpilogue(float x)
{
    if constexpr (kEpilogue == AttentionEpilogue::kHardswish)
    {
        return x * fminf(fmaxf(x + 3.0F, 0.0F), 6.0F) * (1.0F / 6.0F);
    }
    else
    {
        return x;
    }
}

__device__ __forceinline__ uint32_t packHalves(float low, float high)
{
    __half2 const pair = __floats2half2_rn(low, high);
    return *reinterpret_cast<uint32_t const*>(&pair);
}

__device__ __forceinline__ uint32_t loadHalfPair(__half const* p)
{
    return *reinterpret_cast<uint32_t const*>(p);
}

//! Starts the copies of rows [0, paddedRows) of one (batch, head) slice into a shared array of
//! rows `sharedStride` elements apart; rows from `rows` on are zero-filled (and read nothing). Each
//! thread copies one 16-byte column of every (blockDim.x / chunks per row)-th row, stepping two
//! addresses instead of recomputing both per copy (the kernels are bound by instruction issue: run 15's
//! profile). Chunks per row (2 to 32, a power of two) divide blockDim.x (a multiple of 32).
template <typename T, int kWidth>
__device__ __forceinline__ void stageRows(
    T* shared, int sharedStride, T const* global, int64_t tokenStride, int rows, int paddedRows)
{
    constexpr int kPerChunk = kChunkBytes / static_cast<int>(sizeof(T));
    constexpr int kChunksPerRow = kWidth / kPerChunk;
    static_assert(32 % kChunksPerRow == 0, "a row's chunks must divide a warp, so that they divide blockDim.x");
    int const rowStep = static_cast<int>(blockDim.x) / kChunksPerRow;
    int row = static_cast<int>(threadIdx.x) / kChunksPerRow;
    int const column = (static_cast<int>(threadIdx.x) % kChunksPerRow) * kPerChunk;
    uint32_t dst = sharedAddress(shared + row * sharedStride + column);
    T const* src = global + row * tokenStride + column;
    uint32_t const dstStep = static_cast<uint32_t>(rowStep * sharedStride) * sizeof(T);
    int64_t const srcStep = rowStep * tokenStride;
    for (; row < paddedRows; row += rowStep, dst += dstStep, src += srcStep)
    {
        bool const valid = row < rows;
        copyChunkAsync(dst, valid ? src : global, valid ? kChunkBytes : 0);
    }
}

template <typename T>
__device__ __forceinline__ T const* headSlice(AttentionOperand const& operand, int batch, int head)
{
    return static_cast<T const*>(operand.data) + batch * operand.batchStride + head * operand.headStride;
}

//! The head and the first value column of this CTA's share of the output: blockIdx.y runs over
//! heads x column slices, a slice being the kernel's kValueDim of the problem's valueDim columns
//! (so a wide value head can be split over CTAs that each stage only their slice of V).
struct ColumnSlice
{
    int head;
    int firstColumn;
};

template <int kValueDim>
__device__ __forceinline__ ColumnSlice columnSlice(AttentionProblem const& problem)
{
    int const slices = problem.valueDim / kValueDim;
    int const y = static_cast<int>(blockIdx.y);
    return {y / slices, (y % slices) * kValueDim};
}

//! Shared memory of the fp16 kernel: K and V rows padded by 16 bytes, so that the 8 row addresses of
//! an ldmatrix land on 8 different 16-byte bank groups; then each warp's 16 rows of bias, as they lie
//! in global memory (rows `keys` apart, from the 16-byte boundary at or before the first element).
template <int kKeyTiles, int kKeyDim, int kValueDim>
struct HalfLayout
{
    static constexpr int kKeysPadded = kKeyTiles * 16;
    static constexpr int kKStride = kKeyDim + 8;
    static constexpr int kVStride = kValueDim + 8;
    static constexpr int kKeyValueBytes = kKeysPadded * (kKStride + kVStride) * 2;
    __host__ __device__ static constexpr int biasBlockHalves(int keys)
    {
        return (kRowsPerWarp * keys + 7 + 7) / 8 * 8; // + the alignment shift, in whole 16-byte pieces
    }
    __host__ __device__ static constexpr int bytes(int warps, int keys)
    {
        return kKeyValueBytes + warps * biasBlockHalves(keys) * 2;
    }
};

//! Starts the copies of `count` elements of the bias from element `first` (rows of one head's [queries,
//! keys], contiguous, within a tensor of `total` elements that starts on a 16-byte boundary) into
//! `shared`, in 16-byte pieces from the boundary at or before the first; returns that shift (0 to 7
//! elements). A last piece past the tensor's end reads only what is in it. One warp's lanes share the
//! copies (a quarter of the copies 4-byte words took, each with its own 64-bit address arithmetic).
__device__ __forceinline__ int stageBiasRows(
    __half* shared, __half const* bias, int64_t first, int count, int64_t total, int lane)
{
    constexpr int kPerPiece = kChunkBytes / 2;
    int const shift = static_cast<int>(first % kPerPiece);
    int64_t const alignedFirst = first - shift;
    int const pieces = (count + shift + kPerPiece - 1) / kPerPiece;
    uint32_t const dst = sharedAddress(shared);
    for (int piece = lane; piece < pieces; piece += 32)
    {
        int64_t const element = alignedFirst + piece * kPerPiece;
        int64_t const left = total - element;
        copyChunkAsync(dst + piece * kChunkBytes, bias + element, left >= kPerPiece ? kChunkBytes : static_cast<int>(left) * 2);
    }
    return shift;
}

//! 2^x, approximate and flushing subnormal results to zero: the fp16 kernel's probabilities are rounded
//! to fp16 for P.V, whose smallest subnormal is 2^-24, so nothing below 2^-126 could survive anyway;
//! exp2f keeps subnormal results, which takes more than the one ex2.approx.ftz (104 exponentials per lane
//! at 196 keys).
__device__ __forceinline__ float exp2FlushToZero(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

template <int kKeyTiles, int kKeyDim, int kValueDim, AttentionEpilogue kEpilogue>
__global__ void __launch_bounds__(kMaxWarpsPerCta * 32) attentionHalfKernel(AttentionProblem const problem)
{
    using Layout = HalfLayout<kKeyTiles, kKeyDim, kValueDim>;
    constexpr int kScoreTiles = 2 * kKeyTiles;
    constexpr int kKeySteps = kKeyDim / 16;
    constexpr int kValueTiles = kValueDim / 8;
    extern __shared__ __align__(16) unsigned char sharedBytes[];
    __half* const kShared = reinterpret_cast<__half*>(sharedBytes);
    __half* const vShared = kShared + Layout::kKeysPadded * Layout::kKStride;

    int const batch = static_cast<int>(blockIdx.z);
    ColumnSlice const slice = columnSlice<kValueDim>(problem);
    int const head = slice.head;
    int const keys = problem.keys;
    int const queries = problem.queries;
    int const lane = static_cast<int>(threadIdx.x % 32);
    int const warp = static_cast<int>(threadIdx.x / 32);
    int const tile = static_cast<int>(blockIdx.x) + warp * static_cast<int>(gridDim.x);
    bool const active = tile * kRowsPerWarp < queries; // uniform across the warp

    int const group = lane / 4; // the accumulator row (and row + 8) this lane holds
    int const quad = lane % 4;  // the accumulator column pair 2 * quad, 2 * quad + 1 of each n8 tile
    int const row0 = tile * kRowsPerWarp + group;
    int const row1 = row0 + 8;
    bool const valid0 = row0 < queries;
    bool const valid1 = row1 < queries;

    // Q's A fragments, loaded before K and V are staged, so that their round trip overlaps the copies
    // instead of queueing behind them. Rows past the last query are zero.
    uint32_t qFragments[kKeySteps][4];
    {
        __half const* const q = headSlice<__half>(problem.q, batch, head);
        __half const* const q0 = q + (valid0 ? row0 : 0) * problem.q.tokenStride + 2 * quad;
        __half const* const q1 = q + (valid1 ? row1 : 0) * problem.q.tokenStride + 2 * quad;
#pragma unroll
        for (int step = 0; step < kKeySteps; ++step)
        {
            qFragments[step][0] = valid0 ? loadHalfPair(q0 + step * 16) : 0U;
            qFragments[step][1] = valid1 ? loadHalfPair(q1 + step * 16) : 0U;
            qFragments[step][2] = valid0 ? loadHalfPair(q0 + step * 16 + 8) : 0U;
            qFragments[step][3] = valid1 ? loadHalfPair(q1 + step * 16 + 8) : 0U;
        }
    }

    // Group 1: K, and this warp's bias rows (read once each, so staged rather than loaded where used:
    // scattered 2-byte loads in the softmax cost a dependent global round trip per few keys).
    stageRows<__half, kKeyDim>(kShared, Layout::kKStride, headSlice<__half>(problem.k, batch, head),
        problem.k.tokenStride, keys, Layout::kKeysPadded);
    __half* const biasShared = reinterpret_cast<__half*>(sharedBytes + Layout::kKeyValueBytes)
        + warp * Layout::biasBlockHalves(keys);
    int biasShift = 0;
    if (active)
    {
        int const rows = min(kRowsPerWarp, queries - tile * kRowsPerWarp);
        biasShift = stageBiasRows(biasShared, static_cast<__half const*>(problem.bias),
            (static_cast<int64_t>(head) * queries + tile * kRowsPerWarp) * keys, rows * keys,
            static_cast<int64_t>(problem.heads) * queries * keys, lane);
    }
    commitCopies();
    // Group 2: V, needed only after the softmax.
    stageRows<__half, kValueDim>(vShared, Layout::kVStride,
        headSlice<__half>(problem.v, batch, head) + slice.firstColumn, problem.v.tokenStride, keys, Layout::kKeysPadded);
    commitCopies();

    waitCopies<1>(); // K and the bias have landed (V may still be in flight)
    __syncthreads();

    float scores[kScoreTiles][4];
#pragma unroll
    for (int n = 0; n < kScoreTiles; ++n)
    {
        scores[n][0] = scores[n][1] = scores[n][2] = scores[n][3] = 0.0F;
    }
    float sum0 = 0.0F;
    float sum1 = 0.0F;
    uint32_t pFragments[kKeyTiles][4];
    if (active)
    {
        // ldmatrix x4 over 16 keys x 16 features: matrices (keys 0-7 | 8-15) x (features 0-7 | 8-15);
        // lanes 8m..8m+7 address matrix m's rows.
        int const kRow = (lane / 16) * 8 + lane % 8;
        int const kCol = ((lane / 8) % 2) * 8;
#pragma unroll
        for (int kt = 0; kt < kKeyTiles; ++kt)
        {
#pragma unroll
            for (int step = 0; step < kKeySteps; ++step)
            {
                uint32_t b[4];
                loadMatrices(b, sharedAddress(kShared + (kt * 16 + kRow) * Layout::kKStride + step * 16 + kCol));
                mma16816(scores[2 * kt], qFragments[step], b[0], b[1]);
                mma16816(scores[2 * kt + 1], qFragments[step], b[2], b[3]);
            }
        }

        // Scale, bias, mask; exponents in base 2 (exp(x) = exp2(x log2 e)).
        float const scaleLog2 = problem.scale * kLog2e;
        __half const* const bias0 = biasShared + biasShift + group * keys;
        __half const* const bias1 = bias0 + 8 * keys;
        float max0 = -INFINITY;
        float max1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < kScoreTiles; ++n)
        {
#pragma unroll
            for (int c = 0; c < 2; ++c)
            {
                int const col = n * 8 + 2 * quad + c;
                bool const key = col < keys;
                float const b0 = key && valid0 ? __half2float(bias0[col]) : 0.0F;
                float const b1 = key && valid1 ? __half2float(bias1[col]) : 0.0F;
                scores[n][c] = key ? fmaf(scores[n][c], scaleLog2, b0 * kLog2e) : -INFINITY;
                scores[n][2 + c] = key ? fmaf(scores[n][2 + c], scaleLog2, b1 * kLog2e) : -INFINITY;
                max0 = fmaxf(max0, scores[n][c]);
                max1 = fmaxf(max1, scores[n][2 + c]);
            }
        }
        // The four lanes of a quad hold one row between them.
        max0 = fmaxf(max0, __shfl_xor_sync(0xffffffffU, max0, 1));
        max0 = fmaxf(max0, __shfl_xor_sync(0xffffffffU, max0, 2));
        max1 = fmaxf(max1, __shfl_xor_sync(0xffffffffU, max1, 1));
        max1 = fmaxf(max1, __shfl_xor_sync(0xffffffffU, max1, 2));
#pragma unroll
        for (int n = 0; n < kScoreTiles; ++n)
        {
            scores[n][0] = exp2FlushToZero(scores[n][0] - max0);
            scores[n][1] = exp2FlushToZero(scores[n][1] - max0);
            scores[n][2] = exp2FlushToZero(scores[n][2] - max1);
            scores[n][3] = exp2FlushToZero(scores[n][3] - max1);
            sum0 += scores[n][0] + scores[n][1];
            sum1 += scores[n][2] + scores[n][3];
        }
        sum0 += __shfl_xor_sync(0xffffffffU, sum0, 1);
        sum0 += __shfl_xor_sync(0xffffffffU, sum0, 2);
        sum1 += __shfl_xor_sync(0xffffffffU, sum1, 1);
        sum1 += __shfl_xor_sync(0xffffffffU, sum1, 2);
        // C fragments of n8 tiles 2kt and 2kt+1 are the A fragment of k16 tile kt.
#pragma unroll
        for (int kt = 0; kt < kKeyTiles; ++kt)
        {
            pFragments[kt][0] = packHalves(scores[2 * kt][0], scores[2 * kt][1]);
            pFragments[kt][1] = packHalves(scores[2 * kt][2], scores[2 * kt][3]);
            pFragments[kt][2] = packHalves(scores[2 * kt + 1][0], scores[2 * kt + 1][1]);
            pFragments[kt][3] = packHalves(scores[2 * kt + 1][2], scores[2 * kt + 1][3]);
        }
    }

    waitCopies<0>(); // V has landed
    __syncthreads();
    if (!active)
    {
        return;
    }

    float outAcc[kValueTiles][4];
#pragma unroll
    for (int n = 0; n < kValueTiles; ++n)
    {
        outAcc[n][0] = outAcc[n][1] = outAcc[n][2] = outAcc[n][3] = 0.0F;
    }
    // ldmatrix.trans x4 over 16 keys x 16 value columns: matrices (keys 0-7 | 8-15) x (columns 0-7 | 8-15),
    // transposed so each lane gets two consecutive keys of one column (the B fragment of P.V).
    int const vRow = ((lane / 8) % 2) * 8 + lane % 8;
    int const vCol = (lane / 16) * 8;
#pragma unroll
    for (int kt = 0; kt < kKeyTiles; ++kt)
    {
#pragma unroll
        for (int pair = 0; pair < kValueTiles / 2; ++pair)
        {
            uint32_t b[4];
            loadMatricesTransposed(b, sharedAddress(vShared + (kt * 16 + vRow) * Layout::kVStride + pair * 16 + vCol));
            mma16816(outAcc[2 * pair], pFragments[kt], b[0], b[1]);
            mma16816(outAcc[2 * pair + 1], pFragments[kt], b[2], b[3]);
        }
    }

    int64_t const rowElements = static_cast<int64_t>(problem.heads) * problem.valueDim;
    __half* const out = static_cast<__half*>(problem.out) + static_cast<int64_t>(batch) * queries * rowElements
        + static_cast<int64_t>(head) * problem.valueDim + slice.firstColumn + 2 * quad;
    float const inverse0 = 1.0F / sum0;
    float const inverse1 = 1.0F / sum1;
    if (valid0)
    {
        __half* const out0 = out + row0 * rowElements;
#pragma unroll
        for (int n = 0; n < kValueTiles; ++n)
        {
            *reinterpret_cast<__half2*>(out0 + n * 8) = __floats2half2_rn(
                applyEpilogue<kEpilogue>(outAcc[n][0] * inverse0), applyEpilogue<kEpilogue>(outAcc[n][1] * inverse0));
        }
    }
    if (valid1)
    {
        __half* const out1 = out + row1 * rowElements;
#pragma unroll
        for (int n = 0; n < kValueTiles; ++n)
        {
            *reinterpret_cast<__half2*>(out1 + n * 8) = __floats2half2_rn(
                applyEpilogue<kEpilogue>(outAcc[n][2] * inverse1), applyEpilogue<kEpilogue>(outAcc[n][3] * inverse1));
        }
    }
}

//! Shared memory of the fp32 kernel: K rows padded by 16 bytes (a lane per key reads 16-byte
//! pieces of its row: 8 lanes of a phase hit 8 distinct bank groups), V unpadded (lanes read
//! consecutive columns of one row), then each warp's probabilities, [key][kFloatRowsPerPass].
template <int kKeyTiles, int kKeyDim, int kValueDim>
struct FloatLayout
{
    static constexpr int kKeysPadded = kKeyTiles * 16;
    static constexpr int kKStride = kKeyDim + 4;
    static constexpr int kVStride = kValueDim;
    static constexpr int kProbabilityFloats = kKeysPadded * kFloatRowsPerPass;
    static constexpr int kFloatsBeforeProbabilities = kKeysPadded * (kKStride + kVStride);
    static constexpr int bytes(int warps)
    {
        return (kFloatsBeforeProbabilities + warps * kProbabilityFloats) * 4;
    }
};

template <int kWidth>
struct FloatVector;
template <>
struct FloatVector<1>
{
    using Type = float;
};
template <>
struct FloatVector<2>
{
    using Type = float2;
};
template <>
struct FloatVector<4>
{
    using Type = float4;
};

//! The fp32 kernel's body; its two kernels below differ only in their launch bounds.
template <int kKeyTiles, int kKeyDim, int kValueDim, AttentionEpilogue kEpilogue>
__device__ __forceinline__ void attentionFloat(AttentionProblem const& problem)
{
    using Layout = FloatLayout<kKeyTiles, kKeyDim, kValueDim>;
    constexpr int kRows = kFloatRowsPerPass;
    constexpr int kKeysPerLane = (Layout::kKeysPadded + 31) / 32;
    constexpr int kColumnsPerLane = kValueDim / 32;
    constexpr int kQuads = kKeyDim / 4;
    using Vector = typename FloatVector<kColumnsPerLane>::Type;
    extern __shared__ __align__(16) unsigned char sharedBytes[];
    float* const kShared = reinterpret_cast<float*>(sharedBytes);
    float* const vShared = kShared + Layout::kKeysPadded * Layout::kKStride;

    int const batch = static_cast<int>(blockIdx.z);
    ColumnSlice const slice = columnSlice<kValueDim>(problem);
    int const head = slice.head;
    int const keys = problem.keys;
    int const queries = problem.queries;
    stageRows<float, kKeyDim>(kShared, Layout::kKStride, headSlice<float>(problem.k, batch, head),
        problem.k.tokenStride, keys, Layout::kKeysPadded);
    stageRows<float, kValueDim>(vShared, Layout::kVStride, headSlice<float>(problem.v, batch, head) + slice.firstColumn,
        problem.v.tokenStride, keys, Layout::kKeysPadded);
    commitCopies();
    waitCopies<0>();
    __syncthreads();

    int const lane = static_cast<int>(threadIdx.x % 32);
    int const warp = static_cast<int>(threadIdx.x / 32);
    float* const probabilities = reinterpret_cast<float*>(sharedBytes) + Layout::kFloatsBeforeProbabilities
        + warp * Layout::kProbabilityFloats;
    int const tile = static_cast<int>(blockIdx.x) + warp * static_cast<int>(gridDim.x);
    float const scaleLog2 = problem.scale * kLog2e;
    float const* const q = headSlice<float>(problem.q, batch, head);
    float const* const bias = static_cast<float const*>(problem.bias) + static_cast<int64_t>(head) * queries * keys;
    int64_t const rowElements = static_cast<int64_t>(problem.heads) * problem.valueDim;
    float* const out = static_cast<float*>(problem.out) + static_cast<int64_t>(batch) * queries * rowElements
        + static_cast<int64_t>(head) * problem.valueDim + slice.firstColumn + lane * kColumnsPerLane;

    for (int pass = 0; pass < kRowsPerWarp / kRows; ++pass)
    {
        int const firstRow = tile * kRowsPerWarp + pass * kRows;
        if (firstRow >= queries)
        {
            break; // uniform across the warp
        }
        float4 qRows[kRows][kQuads];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
        {
            bool const valid = firstRow + r < queries;
            float4 const* const qRow = reinterpret_cast<float4 const*>(q + (valid ? firstRow + r : 0) * problem.q.tokenStride);
#pragma unroll
            for (int i = 0; i < kQuads; ++i)
            {
                qRows[r][i] = valid ? qRow[i] : make_float4(0.0F, 0.0F, 0.0F, 0.0F);
            }
        }
        float scores[kRows][kKeysPerLane];
        float maxima[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
        {
            maxima[r] = -INFINITY;
        }
#pragma unroll
        for (int i = 0; i < kKeysPerLane; ++i)
        {
            int const key = lane + 32 * i;
            float dots[kRows] = {};
            if (key < keys)
            {
                float4 const* const kRow = reinterpret_cast<float4 const*>(kShared + key * Layout::kKStride);
#pragma unroll
                for (int d = 0; d < kQuads; ++d)
                {
                    float4 const kv = kRow[d];
#pragma unroll
                    for (int r = 0; r < kRows; ++r)
                    {
                        dots[r] = fmaf(qRows[r][d].x, kv.x, dots[r]);
                        dots[r] = fmaf(qRows[r][d].y, kv.y, dots[r]);
                        dots[r] = fmaf(qRows[r][d].z, kv.z, dots[r]);
                        dots[r] = fmaf(qRows[r][d].w, kv.w, dots[r]);
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < kRows; ++r)
            {
                bool const valid = key < keys && firstRow + r < queries;
                float const b = valid ? bias[static_cast<int64_t>(firstRow + r) * keys + key] : 0.0F;
                scores[r][i] = key < keys ? fmaf(dots[r], scaleLog2, b * kLog2e) : -INFINITY;
                maxima[r] = fmaxf(maxima[r], scores[r][i]);
            }
        }
        float sums[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
        {
#pragma unroll
            for (int offset = 16; offset > 0; offset /= 2)
            {
                maxima[r] = fmaxf(maxima[r], __shfl_xor_sync(0xffffffffU, maxima[r], offset));
            }
            sums[r] = 0.0F;
#pragma unroll
            for (int i = 0; i < kKeysPerLane; ++i)
            {
                scores[r][i] = exp2f(scores[r][i] - maxima[r]);
                sums[r] += scores[r][i];
            }
#pragma unroll
            for (int offset = 16; offset > 0; offset /= 2)
            {
                sums[r] += __shfl_xor_sync(0xffffffffU, sums[r], offset);
            }
        }
        __syncwarp(); // the previous pass has finished reading the probabilities
#pragma unroll
        for (int i = 0; i < kKeysPerLane; ++i)
        {
            int const key = lane + 32 * i;
            if (key < Layout::kKeysPadded)
            {
                reinterpret_cast<float4*>(probabilities)[key]
                    = make_float4(scores[0][i], scores[1][i], scores[2][i], scores[3][i]);
            }
        }
        __syncwarp();

        float acc[kRows][kColumnsPerLane] = {};
#pragma unroll 4
        for (int key = 0; key < keys; ++key)
        {
            float4 const p = reinterpret_cast<float4 const*>(probabilities)[key];
            Vector const value = reinterpret_cast<Vector const*>(vShared + key * Layout::kVStride)[lane];
            float const* const v = reinterpret_cast<float const*>(&value);
            float const pr[kRows] = {p.x, p.y, p.z, p.w};
#pragma unroll
            for (int r = 0; r < kRows; ++r)
            {
#pragma unroll
                for (int c = 0; c < kColumnsPerLane; ++c)
                {
                    acc[r][c] = fmaf(pr[r], v[c], acc[r][c]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r)
        {
            if (firstRow + r < queries)
            {
                float const inverse = 1.0F / sums[r];
                Vector result;
                float* const values = reinterpret_cast<float*>(&result);
#pragma unroll
                for (int c = 0; c < kColumnsPerLane; ++c)
                {
                    values[c] = applyEpilogue<kEpilogue>(acc[r][c] * inverse);
                }
                *reinterpret_cast<Vector*>(out + (firstRow + r) * rowElements) = result;
            }
        }
    }
}

template <int kKeyTiles, int kKeyDim, int kValueDim, AttentionEpilogue kEpilogue>
__global__ void __launch_bounds__(kMaxWarpsPerCta * 32) attentionFloatKernel(AttentionProblem const problem)
{
    attentionFloat<kKeyTiles, kKeyDim, kValueDim, kEpilogue>(problem);
}

//! The fp32 kernel for 64 keys (LeViT's 49) and key heads of 32, held to 168 registers so that 3
//! CTAs of 4 warps fit a multiprocessor: on the H200, batch 64 [5, 49, 49, 32, 64] took 17.4 us in
//! run 3 (166 registers), 27.6 in run 8 (171: 2 CTAs) and 17.3 in run 9 (held to 168). The bound
//! covers every value width; it spills 16 bytes at 64 columns and 24 at 32. A minimum of blocks on
//! the other kernels raised their register counts by 20-40 (nvcc 13.0): plain bound there.
template <int kKeyTiles, int kKeyDim, int kValueDim, AttentionEpilogue kEpilogue>
__global__ void __launch_bounds__(kMaxWarpsPerCta * 32, 3) attentionFloatKernelThreeCtas(AttentionProblem const problem)
{
    attentionFloat<kKeyTiles, kKeyDim, kValueDim, kEpilogue>(problem);
}

inline bool aligned16(void const* p)
{
    return reinterpret_cast<uintptr_t>(p) % kChunkBytes == 0;
}

inline bool operandAligned(AttentionOperand const& operand, int elementBytes)
{
    int64_t const perChunk = kChunkBytes / elementBytes;
    return aligned16(operand.data) && operand.batchStride % perChunk == 0 && operand.tokenStride % perChunk == 0
        && operand.headStride % perChunk == 0;
}

//! Number of multiprocessors of the current device (132 if it cannot be read).
inline int multiprocessors()
{
    int device = 0;
    int count = 0;
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count < 1)
    {
        return 132;
    }
    return count;
}

//! A launch: warps per CTA (one query tile of 16 rows each) and value columns per CTA.
struct LaunchShape
{
    int warps;
    int columns;
};

//! The dispatcher's launch shape; `warpsPerCta` / `valueColumns` above 0 replace its choices.
//! fp16, from run 8's sweep on the H200 of every forced shape at every LeViT shape and batch 1, 16
//! and 64 (NOTES.md; within 1.01x of the fastest in geometric mean, 1.10x at worst): a warp per tile
//! up to 4; where that grid has under two CTAs per multiprocessor, 4 warps whatever the tiles (the
//! spare warps only help stage K and V: batch 1 [16, 16, 49, 32, 128] 3.2 us against 5.0 with one
//! warp); and there, while under half a CTA per multiprocessor, the value head in slices of 64 or 32
//! columns, each CTA staging its part of V (batch 1 [12, 49, 196, 32, 128]: 6.1 us in 32-column
//! slices against 9.1 in one-warp CTAs of 64 columns). fp32 computes q.k on the SIMT units, where
//! repeating it per slice costs more than it saves: whole heads, and fewer warps per CTA for small
//! grids (balanced so that the CTAs of one (batch, head) differ by at most one tile).
inline LaunchShape launchShapeFor(AttentionProblem const& problem, int tiles, int warpsPerCta, int valueColumns)
{
    int64_t const sms = multiprocessors();
    auto ctas = [&](int warps, int columns) {
        return static_cast<int64_t>(problem.batch) * problem.heads * (problem.valueDim / columns)
            * ((tiles + warps - 1) / warps);
    };
    int warps = tiles < kMaxWarpsPerCta ? tiles : kMaxWarpsPerCta;
    int columns = valueColumns > 0 ? valueColumns : problem.valueDim;
    if (problem.dtype == AttentionDType::kFloat16)
    {
        if (ctas(warps, columns) < 2 * sms)
        {
            warps = kMaxWarpsPerCta;
        }
        warps = warpsPerCta > 0 ? warpsPerCta : warps;
        while (valueColumns == 0 && columns > 32 && 2 * ctas(warps, columns) < sms)
        {
            columns /= 2;
        }
        return {warps, columns};
    }
    if (warpsPerCta > 0)
    {
        return {warpsPerCta, columns};
    }
    while (warps > 1 && ctas(warps, columns) < sms)
    {
        warps /= 2;
    }
    int const ctasPerSlice = (tiles + warps - 1) / warps;
    return {(tiles + ctasPerSlice - 1) / ctasPerSlice, columns};
}

constexpr int kMaxCachedDevices = 64;

//! The most dynamic shared memory a block may have on the current device (opt-in), or 0 where unknown.
inline int sharedBytesLimit()
{
    int device = 0;
    int bytes = 0;
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    {
        return 0;
    }
    return bytes;
}

//! Raises `kernel`'s dynamic shared-memory limit once per device to `kBytes` (its 4-warp size) or, where
//! the device allows less (the A10's and L4's 99 KB against 227 KB on Hopper), to the device's limit, so
//! that launches that fit still run. Done on the first launch, which (as with every launch that a CUDA
//! graph captures after a warm-up) is outside any capture.
template <auto kKernel, int kBytes>
cudaError_t allowSharedBytes(int deviceLimit)
{
    static std::atomic<uint64_t> raised{0};
    int device = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status != cudaSuccess)
    {
        return status;
    }
    uint64_t const bit = device < kMaxCachedDevices ? uint64_t{1} << device : 0;
    if (bit != 0 && (raised.load(std::memory_order_relaxed) & bit) != 0)
    {
        return cudaSuccess;
    }
    int const bytes = deviceLimit > 0 && deviceLimit < kBytes ? deviceLimit : kBytes;
    status = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (status == cudaSuccess)
    {
        raised.fetch_or(bit, std::memory_order_relaxed);
    }
    return status;
}

//! Launches `kernel` with `bytes` of dynamic shared memory, after checking they fit this device.
template <auto kKernel, int kMaxBytes>
AttentionLaunchResult launchWithShared(AttentionProblem const& problem, dim3 grid, dim3 block, int bytes,
    cudaStream_t stream)
{
    int const limit = sharedBytesLimit();
    if (limit > 0 && bytes > limit)
    {
        return {AttentionStatus::kSharedMemoryExceeded, cudaSuccess};
    }
    cudaError_t const status = allowSharedBytes<kKernel, kMaxBytes>(limit);
    if (status != cudaSuccess)
    {
        return {AttentionStatus::kLaunchFailed, status};
    }
    kKernel<<<grid, block, bytes, stream>>>(problem);
    cudaError_t const launched = cudaGetLastError();
    return {launched == cudaSuccess ? AttentionStatus::kSuccess : AttentionStatus::kLaunchFailed, launched};
}

template <int kKeyTiles, int kKeyDim, int kValueDim, AttentionEpilogue kEpilogue>
AttentionLaunchResult launchWithEpilogue(
    AttentionProblem const& problem, LaunchShape const& shape, dim3 grid, cudaStream_t stream)
{
    int const warps = shape.warps;
    dim3 const block(static_cast<unsigned>(warps * 32));
    if (problem.dtype == AttentionDType::kFloat16)
    {
        using Layout = HalfLayout<kKeyTiles, kKeyDim, kValueDim>;
        return launchWithShared<attentionHalfKernel<kKeyTiles, kKeyDim, kValueDim, kEpilogue>,
            Layout::bytes(kMaxWarpsPerCta, Layout::kKeysPadded)>(
            problem, grid, block, Layout::bytes(warps, problem.keys), stream);
    }
    using Layout = FloatLayout<kKeyTiles, kKeyDim, kValueDim>;
    if constexpr (kKeyTiles == 4 && kKeyDim == 32)
    {
        return launchWithShared<attentionFloatKernelThreeCtas<kKeyTiles, kKeyDim, kValueDim, kEpilogue>,
            Layout::bytes(kMaxWarpsPerCta)>(problem, grid, block, Layout::bytes(warps), stream);
    }
    else
    {
        return launchWithShared<attentionFloatKernel<kKeyTiles, kKeyDim, kValueDim, kEpilogue>,
            Layout::bytes(kMaxWarpsPerCta)>(problem, grid, block, Layout::bytes(warps), stream);
    }
}

template <int kKeyTiles, int kKeyDim, int kValueDim>
AttentionLaunchResult launchFor(AttentionProblem const& problem, LaunchShape const& shape, dim3 grid, cudaStream_t stream)
{
    return problem.epilogue == AttentionEpilogue::kHardswish
        ? launchWithEpilogue<kKeyTiles, kKeyDim, kValueDim, AttentionEpilogue::kHardswish>(problem, shape, grid, stream)
        : launchWithEpilogue<kKeyTiles, kKeyDim, kValueDim, AttentionEpilogue::kNone>(problem, shape, grid, stream);
}

//! Key tiles the kernels are built for: 16, 64, 208 and 256 keys (LeViT's 16, 49 and 196, and 256
//! for 256x256 inputs); a count takes the smallest that holds it, the rest masked.
template <int kKeyDim, int kValueDim>
AttentionLaunchResult launchForKeys(AttentionProblem const& problem, LaunchShape const& shape, dim3 grid, cudaStream_t stream)
{
    int const tiles = (problem.keys + 15) / 16;
    if (tiles <= 1)
    {
        return launchFor<1, kKeyDim, kValueDim>(problem, shape, grid, stream);
    }
    if (tiles <= 4)
    {
        return launchFor<4, kKeyDim, kValueDim>(problem, shape, grid, stream);
    }
    if (tiles <= 13)
    {
        return launchFor<13, kKeyDim, kValueDim>(problem, shape, grid, stream);
    }
    return launchFor<16, kKeyDim, kValueDim>(problem, shape, grid, stream);
}

template <int kKeyDim>
AttentionLaunchResult launchForColumns(AttentionProblem const& problem, LaunchShape const& shape, dim3 grid, cudaStream_t stream)
{
    switch (shape.columns)
    {
    case 32: return launchForKeys<kKeyDim, 32>(problem, shape, grid, stream);
    case 64: return launchForKeys<kKeyDim, 64>(problem, shape, grid, stream);
    default: return launchForKeys<kKeyDim, 128>(problem, shape, grid, stream);
    }
}

} // namespace detail

char const* attentionStatusText(AttentionStatus status) noexcept
{
    switch (status)
    {
    case AttentionStatus::kSuccess: return "success";
    case AttentionStatus::kUnsupportedKeyDim: return "the key (q/k head) size must be 16 or 32";
    case AttentionStatus::kUnsupportedValueDim: return "the value head size must be 32, 64 or 128";
    case AttentionStatus::kUnsupportedKeyCount: return "the number of keys must be 1 to 256";
    case AttentionStatus::kTooLarge:
        return "batch must be at most 65535, and heads times the value head's slices per CTA at most 65535";
    case AttentionStatus::kMisaligned:
        return "q, k, v, bias and out must start on 16-byte boundaries, and q/k/v's batch, token and head "
               "strides must be multiples of 16 bytes";
    case AttentionStatus::kInvalidArgument:
        return "sizes must be non-negative, pointers non-null, and the epilogue and forced launch choices known";
    case AttentionStatus::kLaunchFailed: return "the kernel launch failed";
    case AttentionStatus::kSharedMemoryExceeded:
        return "this shape needs more shared memory per block than this GPU allows (K and a slice of V of a head "
               "are staged whole in shared memory)";
    }
    return "unknown status";
}

AttentionLaunchResult attentionForward(
    AttentionProblem const& problem, cudaStream_t stream, AttentionLaunchOverride const& forced) noexcept
{
    using detail::kMaxWarpsPerCta;
    using detail::kRowsPerWarp;
    int32_t const warpsPerCta = forced.warpsPerCta;
    int32_t const valueColumns = forced.valueColumns;
    if (problem.batch < 0 || problem.heads < 0 || problem.queries < 0 || problem.keys < 0 || warpsPerCta < 0
        || warpsPerCta > kMaxWarpsPerCta
        || (problem.epilogue != AttentionEpilogue::kNone && problem.epilogue != AttentionEpilogue::kHardswish))
    {
        return {AttentionStatus::kInvalidArgument, cudaSuccess};
    }
    if (problem.keyDim != 16 && problem.keyDim != 32)
    {
        return {AttentionStatus::kUnsupportedKeyDim, cudaSuccess};
    }
    if (problem.valueDim != 32 && problem.valueDim != 64 && problem.valueDim != 128)
    {
        return {AttentionStatus::kUnsupportedValueDim, cudaSuccess};
    }
    if (valueColumns != 0
        && ((valueColumns != 32 && valueColumns != 64 && valueColumns != 128) || valueColumns > problem.valueDim))
    {
        return {AttentionStatus::kInvalidArgument, cudaSuccess};
    }
    if (problem.keys < 1 || problem.keys > kMaxKeys)
    {
        return {AttentionStatus::kUnsupportedKeyCount, cudaSuccess};
    }
    if (problem.batch > 65535 || problem.heads > 65535)
    {
        return {AttentionStatus::kTooLarge, cudaSuccess};
    }
    if (problem.batch == 0 || problem.heads == 0 || problem.queries == 0)
    {
        return {AttentionStatus::kSuccess, cudaSuccess};
    }
    if (problem.q.data == nullptr || problem.k.data == nullptr || problem.v.data == nullptr || problem.bias == nullptr
        || problem.out == nullptr)
    {
        return {AttentionStatus::kInvalidArgument, cudaSuccess};
    }
    int const elementBytes = problem.dtype == AttentionDType::kFloat16 ? 2 : 4;
    if (!detail::operandAligned(problem.q, elementBytes) || !detail::operandAligned(problem.k, elementBytes)
        || !detail::operandAligned(problem.v, elementBytes) || !detail::aligned16(problem.out)
        || !detail::aligned16(problem.bias))
    {
        return {AttentionStatus::kMisaligned, cudaSuccess};
    }
    int const tiles = (problem.queries + kRowsPerWarp - 1) / kRowsPerWarp;
    detail::LaunchShape shape = detail::launchShapeFor(problem, tiles, warpsPerCta, valueColumns);
    while (true)
    {
        int64_t const headSlices = static_cast<int64_t>(problem.heads) * (problem.valueDim / shape.columns);
        if (headSlices > 65535)
        {
            return {AttentionStatus::kTooLarge, cudaSuccess}; // grid y
        }
        dim3 const grid(static_cast<unsigned>((tiles + shape.warps - 1) / shape.warps),
            static_cast<unsigned>(headSlices), static_cast<unsigned>(problem.batch));
        AttentionLaunchResult const result = problem.keyDim == 16
            ? detail::launchForColumns<16>(problem, shape, grid, stream)
            : detail::launchForColumns<32>(problem, shape, grid, stream);
        // The shared-memory check comes before the launch, so a narrower slice (a smaller part of V
        // staged: fp32 heads of 128 over 196 keys on the 99 KB of compute capability 8.6 / 8.9) can
        // still be tried where the columns were not forced.
        if (result.status != AttentionStatus::kSharedMemoryExceeded || valueColumns > 0 || shape.columns == 32)
        {
            return result;
        }
        shape.columns /= 2;
    }
}

} // namespace levit_attention
