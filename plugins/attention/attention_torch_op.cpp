// PyTorch binding of the fused attention kernel: levit_trt::attention(q, k, v, bias, scale,
// hardswish=False) -> out (hardswish applies LeViT's activation to the output in the kernel), its
// out= overload (tests poison `out` first) and attention_tuned (CTA size and value columns per CTA
// forced, for tests and sweeps). q [B, Nq, H, Dq], k [B, Nk, H, Dq], v [B, Nk, H, Dv] with any
// strides whose last is 1 (the views timm's qkv(x).view(B, N, H, -1).split(...) gives), bias
// [H, Nq, Nk] contiguous; out [B, Nq, H*Dv] contiguous. A CUDA kernel, a Meta kernel so that
// FakeTensor (torch.compile, torch.export) knows the output without running anything, and a CPU
// kernel that says CPU tensors are not supported. The namespace levit_trt belongs to the softmax
// library (TORCH_LIBRARY); this one adds to it (TORCH_LIBRARY_FRAGMENT), so both load into one
// process in either order.
#include <cstdint>
#include <string>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "attention_launch.h"
#include "shape_text.h"

namespace
{

using levit_attention::AttentionDType;
using levit_attention::AttentionOperand;
using levit_attention::AttentionProblem;
using levit_attention::AttentionStatus;
using levit_plugins::shapeText;

std::string describe(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& bias)
{
    return "q " + shapeText(q.sizes()) + ", k " + shapeText(k.sizes()) + ", v " + shapeText(v.sizes()) + ", bias "
        + shapeText(bias.sizes());
}

//! Shapes, dtypes and layouts the kernel takes; what a Meta kernel can check without data.
void checkSupported(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& bias)
{
    TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && bias.dim() == 3,
        "levit_trt::attention: needs q [B, Nq, H, Dq], k [B, Nk, H, Dq], v [B, Nk, H, Dv] and bias [H, Nq, Nk]; got ",
        describe(q, k, v, bias));
    TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kHalf,
        "levit_trt::attention: supports float32 and float16 only; got ", q.scalar_type());
    TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type()
            && bias.scalar_type() == q.scalar_type(),
        "levit_trt::attention: q, k, v and bias must have one dtype; got ", q.scalar_type(), ", ", k.scalar_type(),
        ", ", v.scalar_type(), ", ", bias.scalar_type());
    int64_t const batch = q.size(0);
    int64_t const queries = q.size(1);
    int64_t const heads = q.size(2);
    int64_t const keyDim = q.size(3);
    int64_t const keys = k.size(1);
    TORCH_CHECK(k.size(0) == batch && v.size(0) == batch && k.size(2) == heads && v.size(2) == heads
            && k.size(3) == keyDim && v.size(1) == keys && bias.size(0) == heads && bias.size(1) == queries
            && bias.size(2) == keys,
        "levit_trt::attention: shapes do not fit together (q [B, Nq, H, Dq], k [B, Nk, H, Dq], v [B, Nk, H, Dv], "
        "bias [H, Nq, Nk]); got ", describe(q, k, v, bias));
    TORCH_CHECK(keyDim == 16 || keyDim == 32, "levit_trt::attention: key (q/k head) size ", std::to_string(keyDim),
        " is not supported (16 or 32); got ", describe(q, k, v, bias));
    TORCH_CHECK(v.size(3) == 32 || v.size(3) == 64 || v.size(3) == 128, "levit_trt::attention: value head size ",
        std::to_string(v.size(3)), " is not supported (32, 64 or 128); got ", describe(q, k, v, bias));
    TORCH_CHECK(keys >= 1 && keys <= levit_attention::kMaxKeys, "levit_trt::attention: ", std::to_string(keys),
        " keys are not supported (1 to ", std::to_string(levit_attention::kMaxKeys), "); got ",
        describe(q, k, v, bias));
    TORCH_CHECK(batch <= 65535 && heads <= 65535, "levit_trt::attention: batch and heads must each be at most 65535; got ",
        describe(q, k, v, bias));
    TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
        "levit_trt::attention: the last axis of q, k and v must be contiguous (stride 1); got strides q ",
        shapeText(q.strides()), ", k ", shapeText(k.strides()), ", v ", shapeText(v.strides()));
    TORCH_CHECK(bias.is_contiguous(), "levit_trt::attention: bias must be contiguous; got strides ",
        shapeText(bias.strides()), " for ", shapeText(bias.sizes()));
}

std::vector<int64_t> outputShape(at::Tensor const& q, at::Tensor const& v)
{
    return {q.size(0), q.size(1), q.size(2) * v.size(3)};
}

bool aligned16(at::Tensor const& t)
{
    int64_t const perChunk = 16 / static_cast<int64_t>(t.element_size());
    bool strides = true;
    for (int64_t d = 0; d + 1 < t.dim(); ++d)
    {
        strides = strides && t.stride(d) % perChunk == 0;
    }
    return strides && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

//! The kernel reads 16-byte pieces; a view that starts or steps off those boundaries is copied once
//! into a fresh (aligned) tensor. The views LeViT's projections give are all aligned.
at::Tensor alignedOperand(at::Tensor const& t)
{
    return aligned16(t) ? t : t.clone(at::MemoryFormat::Contiguous);
}

AttentionOperand operand(at::Tensor const& t)
{
    return AttentionOperand{t.const_data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

void attentionInto(at::Tensor const& qIn, at::Tensor const& kIn, at::Tensor const& vIn, at::Tensor const& biasIn,
    double scale, bool hardswish, at::Tensor& out, levit_attention::AttentionLaunchOverride const& forced)
{
    checkSupported(qIn, kIn, vIn, biasIn);
    TORCH_CHECK(kIn.device() == qIn.device() && vIn.device() == qIn.device() && biasIn.device() == qIn.device(),
        "levit_trt::attention: q, k, v and bias must be on one device; got ", qIn.device(), ", ", kIn.device(), ", ",
        vIn.device(), ", ", biasIn.device());
    std::vector<int64_t> const shape = outputShape(qIn, vIn);
    TORCH_CHECK(out.device() == qIn.device() && out.scalar_type() == qIn.scalar_type() && out.sizes() == shape,
        "levit_trt::attention: out must be ", shapeText(shape), " ", qIn.scalar_type(), " on ", qIn.device(), "; got ",
        shapeText(out.sizes()), " ", out.scalar_type(), " on ", out.device());
    TORCH_CHECK(out.is_contiguous(), "levit_trt::attention: out must be contiguous");
    if (out.numel() == 0)
    {
        return;
    }
    at::Tensor const q = alignedOperand(qIn);
    at::Tensor const k = alignedOperand(kIn);
    at::Tensor const v = alignedOperand(vIn);
    // bias is read as one contiguous array (checked above): only its start must be on a 16-byte boundary.
    at::Tensor const bias = reinterpret_cast<uintptr_t>(biasIn.const_data_ptr()) % 16 == 0 ? biasIn : biasIn.clone();
    for (at::Tensor const* input : {&q, &k, &v, &bias})
    {
        at::assert_no_partial_overlap(out, *input);
    }
    TORCH_CHECK(reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0,
        "levit_trt::attention: out must start on a 16-byte boundary");

    AttentionProblem problem;
    problem.q = operand(q);
    problem.k = operand(k);
    problem.v = operand(v);
    problem.bias = bias.const_data_ptr();
    problem.out = out.mutable_data_ptr();
    problem.batch = static_cast<int32_t>(q.size(0));
    problem.queries = static_cast<int32_t>(q.size(1));
    problem.heads = static_cast<int32_t>(q.size(2));
    problem.keyDim = static_cast<int32_t>(q.size(3));
    problem.keys = static_cast<int32_t>(k.size(1));
    problem.valueDim = static_cast<int32_t>(v.size(3));
    problem.scale = static_cast<float>(scale);
    problem.dtype = q.scalar_type() == at::kHalf ? AttentionDType::kFloat16 : AttentionDType::kFloat32;
    problem.epilogue = hardswish ? levit_attention::AttentionEpilogue::kHardswish : levit_attention::AttentionEpilogue::kNone;
    cudaStream_t const stream = c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
    levit_attention::AttentionLaunchResult const result
        = levit_attention::attentionForward(problem, stream, forced);
    TORCH_CHECK(result.status == AttentionStatus::kSuccess, "levit_trt::attention: ",
        levit_attention::attentionStatusText(result.status), " (", describe(q, k, v, bias), ")",
        result.status == AttentionStatus::kLaunchFailed ? std::string(": ") + cudaGetErrorString(result.cudaStatus)
                                                        : std::string());
}

//! q's device, for the device guard, after checking it is a CUDA one (the dispatcher picks this kernel when
//! any input is on CUDA, and a guard on a CPU device would fail with c10's text instead of ours).
c10::Device cudaDeviceOf(at::Tensor const& q)
{
    TORCH_CHECK(q.is_cuda(), "levit_trt::attention: the CUDA kernel got q on ", q.device(),
        "; q, k, v and bias must be on one CUDA device");
    return q.device();
}

at::Tensor attention(
    at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& bias, double scale, bool hardswish)
{
    c10::cuda::CUDAGuard const deviceGuard(cudaDeviceOf(q));
    checkSupported(q, k, v, bias);
    at::Tensor out = at::empty(outputShape(q, v), q.options());
    attentionInto(q, k, v, bias, scale, hardswish, out, {});
    return out;
}

at::Tensor& attentionOut(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& bias,
    double scale, bool hardswish, at::Tensor& out)
{
    c10::cuda::CUDAGuard const deviceGuard(cudaDeviceOf(q));
    attentionInto(q, k, v, bias, scale, hardswish, out, {});
    return out;
}

void attentionTuned(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& bias,
    double scale, at::Tensor& out, int64_t warpsPerCta, int64_t valueColumns)
{
    TORCH_CHECK(warpsPerCta >= 0 && warpsPerCta <= 4,
        "levit_trt::attention_tuned: warps_per_cta must be 0 (the dispatcher's choice) to 4; got ",
        std::to_string(warpsPerCta));
    TORCH_CHECK(valueColumns == 0
            || ((valueColumns == 32 || valueColumns == 64 || valueColumns == 128) && valueColumns <= v.size(3)),
        "levit_trt::attention_tuned: value_columns must be 0 (the dispatcher's choice), or 32, 64 or 128 and at most "
        "the value head size ", std::to_string(v.size(3)), "; got ", std::to_string(valueColumns));
    c10::cuda::CUDAGuard const deviceGuard(cudaDeviceOf(q));
    attentionInto(
        q, k, v, bias, scale, false, out, {static_cast<int32_t>(warpsPerCta), static_cast<int32_t>(valueColumns)});
}

at::Tensor attentionMeta(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& bias,
    double /* scale */, bool /* hardswish */)
{
    checkSupported(q, k, v, bias);
    return at::empty(outputShape(q, v), q.options());
}

at::Tensor attentionCpu(at::Tensor const& q, at::Tensor const& /* k */, at::Tensor const& /* v */,
    at::Tensor const& /* bias */, double, bool)
{
    TORCH_CHECK(false, "levit_trt::attention runs on CUDA tensors only; got q on ", q.device(),
        " (move the tensors with .cuda(), or use F.scaled_dot_product_attention on the CPU)");
}

} // namespace

TORCH_LIBRARY_FRAGMENT(levit_trt, m)
{
    m.def("attention(Tensor q, Tensor k, Tensor v, Tensor bias, float scale, bool hardswish=False) -> Tensor");
    m.def("attention.out(Tensor q, Tensor k, Tensor v, Tensor bias, float scale, bool hardswish=False, *, "
          "Tensor(a!) out) -> Tensor(a!)");
    m.def("attention_tuned(Tensor q, Tensor k, Tensor v, Tensor bias, float scale, Tensor(a!) out, "
          "int warps_per_cta, int value_columns) -> ()");
}

TORCH_LIBRARY_IMPL(levit_trt, CUDA, m)
{
    m.impl("attention", &attention);
    m.impl("attention.out", &attentionOut);
    m.impl("attention_tuned", &attentionTuned);
}

TORCH_LIBRARY_IMPL(levit_trt, Meta, m)
{
    m.impl("attention", &attentionMeta);
}

TORCH_LIBRARY_IMPL(levit_trt, CPU, m)
{
    m.impl("attention", &attentionCpu);
}
