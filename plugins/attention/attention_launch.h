// Host-side declaration of the fused attention launch function, for bindings compiled by a plain C++
// compiler (the TensorRT plugin, the PyTorch op). The kernels and the definition live in
// attention_kernel.cuh, compiled once, by nvcc, in attention_kernel.cu.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace levit_attention
{

//! Element types the kernels accept; q, k, v, bias and the output all have the same type.
enum class AttentionDType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
};

//! What the kernel applies to each output element, in fp32 before the output's rounding.
enum class AttentionEpilogue : int32_t
{
    kNone = 0,
    kHardswish = 1, //!< x * min(max(x + 3, 0), 6) / 6: LeViT's activation before each attention's projection
};

//! What attentionForward reports; attentionStatusText() gives each a sentence.
enum class AttentionStatus : int32_t
{
    kSuccess = 0,
    kUnsupportedKeyDim = 1,   //!< key (q/k head) size other than 16 or 32
    kUnsupportedValueDim = 2, //!< value head size other than 32, 64 or 128
    kUnsupportedKeyCount = 3, //!< fewer than 1 or more than kMaxKeys keys
    kTooLarge = 4,            //!< batch over 65535 (grid z), or heads x value-column slices over 65535 (grid y)
    kMisaligned = 5,          //!< a q/k/v/out/bias pointer or token/head/batch stride not 16-byte aligned
    kInvalidArgument = 6,     //!< negative sizes, null pointers, an unknown epilogue or an out-of-range forced choice
    kLaunchFailed = 7,        //!< the CUDA launch itself failed; cudaStatus says why
    kSharedMemoryExceeded = 8, //!< the launch needs more shared memory per block than the device allows
};

//! Most keys one (batch, head) may have: K and a slice of V of a head are staged whole in shared
//! memory, and a warp holds a whole score row in registers (LeViT at 224x224 has at most 196; 256x256
//! input, 256).
constexpr int32_t kMaxKeys = 256;

//! One of q, k, v: its first element for batch 0, token 0, head 0, and strides in elements. The last
//! axis (the head's features) is contiguous.
struct AttentionOperand
{
    void const* data{nullptr};
    int64_t batchStride{0};
    int64_t tokenStride{0};
    int64_t headStride{0};
};

//! out[b, i, h*Dv + j] = epilogue(sum_n softmax_n(scale * q[b,i,h,:].k[b,n,h,:] + bias[h,i,n]) v[b,n,h,j])
struct AttentionProblem
{
    AttentionOperand q; //!< [batch, queries, heads, keyDim]
    AttentionOperand k; //!< [batch, keys, heads, keyDim]
    AttentionOperand v; //!< [batch, keys, heads, valueDim]
    void const* bias{nullptr}; //!< [heads, queries, keys], contiguous
    void* out{nullptr};        //!< [batch, queries, heads * valueDim], contiguous
    int32_t batch{0};
    int32_t heads{0};
    int32_t queries{0};
    int32_t keys{0};
    int32_t keyDim{0};
    int32_t valueDim{0};
    float scale{1.0F};
    AttentionDType dtype{AttentionDType::kFloat16};
    AttentionEpilogue epilogue{AttentionEpilogue::kNone};
};

struct AttentionLaunchResult
{
    AttentionStatus status{AttentionStatus::kSuccess};
    cudaError_t cudaStatus{cudaSuccess}; //!< the launch's status when status is kLaunchFailed
};

//! A sentence naming what was unsupported, for the bindings' error messages.
char const* attentionStatusText(AttentionStatus status) noexcept;

//! Launch choices forced for tests and sweeps; each zero leaves that choice to the dispatcher.
struct AttentionLaunchOverride
{
    int32_t warpsPerCta{0};  //!< 1..4 warps (query tiles of 16 rows) per CTA
    int32_t valueColumns{0}; //!< 32, 64 or 128 (at most valueDim) value columns per CTA
};

//! Enqueues one kernel on `stream`. An empty problem (batch, heads or queries zero) launches nothing.
//! A forced choice out of range is kInvalidArgument.
AttentionLaunchResult attentionForward(
    AttentionProblem const& problem, cudaStream_t stream, AttentionLaunchOverride const& forced = {}) noexcept;

} // namespace levit_attention
