"""The PyTorch op `levit_trt::attention` against float64 attention, on a CUDA GPU.

Skipped (with the reason) where there is no CUDA device or the op library is not built. Every
check draws fresh random inputs, passes q, k and v as the strided views LeViT's projections give,
and poisons the output with NaN before the op writes it.
"""

from __future__ import annotations

import pytest
import torch

from levit_trt import plugins
from levit_trt.attention_reference import model_inputs, reference_attention, relative_error
from levit_trt.attention_shapes import LEVIT_ATTENTION_SHAPES, AttentionShape

pytestmark = pytest.mark.gpu

# ||out - ref|| / ||ref|| against float64 computed from the same (rounded) inputs.
# fp16: probabilities are rounded to fp16 for the tensor-core P.V product and the output to fp16
# (relative step 2^-11 each, ~2.5e-4 norm-wise); 2e-3 leaves 8x headroom. fp32: plain fp32 FMA and
# ex2.approx (2 ulp), sums of <= 256 terms: ~1e-6 at worst; 1e-5.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}
DTYPES = (torch.float32, torch.float16)
SHAPE_IDS = [f"{s.variant}-{s.layer}" for s in LEVIT_ATTENTION_SHAPES]


def poisoned_output(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.full((q.shape[0], q.shape[1], q.shape[2] * v.shape[3]), float("nan"), device="cuda", dtype=q.dtype)


def attention_into_poisoned(q, k, v, bias, scale, warps: int = 0, columns: int = 0) -> torch.Tensor:
    out = poisoned_output(q, v)
    if warps or columns:
        torch.ops.levit_trt.attention_tuned(q, k, v, bias, scale, out, warps, columns)
    else:
        returned = torch.ops.levit_trt.attention(q, k, v, bias, scale, out=out)
        assert returned.data_ptr() == out.data_ptr()
    return out


def check(out: torch.Tensor, q, k, v, bias, scale, generator, what: str = "") -> None:
    assert torch.isfinite(out).all(), f"{what}: some outputs were not written (NaN poison left)"
    error = relative_error(out, reference_attention(q, k, v, bias, scale))
    assert error <= TOLERANCE[q.dtype], f"{what}: relative error {error:.3g} (seed {generator.initial_seed()})"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", LEVIT_ATTENTION_SHAPES, ids=SHAPE_IDS)
def test_matches_float64_at_every_levit_shape(attention_op, generator, shape, dtype):
    q, k, v, bias = model_inputs(shape, 3, dtype, generator)
    assert not q.is_contiguous() or shape.downsample  # the model's strided views, read in place
    check(attention_into_poisoned(q, k, v, bias, shape.scale), q, k, v, bias, shape.scale, generator, shape.layer)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hardswish_epilogue_at_every_levit_shape(attention_op, generator, dtype):
    # The kernel's Hardswish against F.hardswish of the float64 attention, with biases x1 and x30
    # (outputs beyond Hardswish's kinks at -3 and 3 come with the larger biases).
    for shape in LEVIT_ATTENTION_SHAPES:
        for bias_scale in (1.0, 30.0):
            q, k, v, bias = model_inputs(shape, 2, dtype, generator, bias_scale=bias_scale)
            out = poisoned_output(q, v)
            torch.ops.levit_trt.attention(q, k, v, bias, shape.scale, hardswish=True, out=out)
            assert torch.isfinite(out).all(), f"{shape.variant} {shape.layer}: NaN poison left"
            reference = torch.nn.functional.hardswish(reference_attention(q, k, v, bias, shape.scale))
            error = relative_error(out, reference)
            assert error <= TOLERANCE[dtype], (f"{shape.variant} {shape.layer} bias x{bias_scale}: relative error "
                                               f"{error:.3g} (seed {generator.initial_seed()})")


def test_functional_form_returns_a_fresh_contiguous_output(attention_op, generator):
    shape = LEVIT_ATTENTION_SHAPES[0]
    q, k, v, bias = model_inputs(shape, 2, torch.float16, generator)
    out = attention_op(q, k, v, bias, shape.scale)
    assert out.shape == (2, shape.queries, shape.heads * shape.value_dim) and out.is_contiguous()
    assert out.dtype == torch.float16
    check(out, q, k, v, bias, shape.scale, generator)


# One self-attention and one downsample attention per key count, both key sizes.
BATCH_SHAPES = [s for s in LEVIT_ATTENTION_SHAPES if s.variant in ("levit_128s", "levit_384")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 2, 17, 64, 256])
@pytest.mark.parametrize("shape", BATCH_SHAPES, ids=[f"{s.variant}-{s.layer}" for s in BATCH_SHAPES])
def test_batches(attention_op, generator, shape, batch, dtype):
    q, k, v, bias = model_inputs(shape, batch, dtype, generator)
    check(attention_into_poisoned(q, k, v, bias, shape.scale), q, k, v, bias, shape.scale, generator)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", BATCH_SHAPES, ids=[f"{s.variant}-{s.layer}" for s in BATCH_SHAPES])
def test_large_biases(attention_op, generator, shape, dtype):
    # Biases of magnitude ~30: the softmax is nearly one-hot, and its row maxima are far from zero,
    # where an unshifted exp would overflow fp16 and fp32 alike.
    q, k, v, bias = model_inputs(shape, 4, dtype, generator, bias_scale=30.0)
    check(attention_into_poisoned(q, k, v, bias, shape.scale), q, k, v, bias, shape.scale, generator)


@pytest.mark.parametrize("warps", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forced_cta_sizes_compute_the_same(attention_op, generator, dtype, warps):
    # Every CTA size, at batches where the dispatcher picks others: CTAs with idle warps and
    # tiles dealt round-robin must still cover every query row.
    for shape in BATCH_SHAPES:
        q, k, v, bias = model_inputs(shape, 5, dtype, generator)
        out = attention_into_poisoned(q, k, v, bias, shape.scale, warps=warps)
        check(out, q, k, v, bias, shape.scale, generator, f"{shape.variant} {shape.layer} warps {warps}")


@pytest.mark.parametrize("columns", [32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forced_value_column_slices_compute_the_same(attention_op, generator, dtype, columns):
    # A value head split over CTAs of `columns` each: every slice must land in its own columns of
    # the output (a slice written at the head's start, or a row stride of the slice's width, leaves
    # NaN poison or the wrong values), with one and with four warps per CTA.
    for shape in (s for s in LEVIT_ATTENTION_SHAPES if s.value_dim >= columns):
        for warps in (1, 4):
            q, k, v, bias = model_inputs(shape, 3, dtype, generator)
            out = attention_into_poisoned(q, k, v, bias, shape.scale, warps=warps, columns=columns)
            check(out, q, k, v, bias, shape.scale, generator,
                  f"{shape.variant} {shape.layer} columns {columns} warps {warps}")


def test_value_columns_wider_than_the_head_are_refused(attention_op, generator):
    shape = next(s for s in LEVIT_ATTENTION_SHAPES if s.value_dim == 64)
    q, k, v, bias = model_inputs(shape, 1, torch.float16, generator)
    with pytest.raises(RuntimeError, match="value_columns must be 0"):
        attention_into_poisoned(q, k, v, bias, shape.scale, columns=128)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("queries", "keys"), [(1, 1), (5, 7), (33, 16), (17, 17), (64, 64), (100, 65),
                                               (208, 208), (200, 256), (3, 256)])
@pytest.mark.parametrize(("key_dim", "value_dim"), [(16, 32), (16, 128), (32, 32), (32, 128)])
def test_other_sizes_within_the_limits(attention_op, generator, queries, keys, key_dim, value_dim, dtype):
    # Key counts between and at the built key tiles (16, 64, 208, 256 keys), padded and masked.
    shape = AttentionShape("any", "any", 3, queries, keys, key_dim, value_dim)
    q, k, v, bias = model_inputs(shape, 2, dtype, generator)
    check(attention_into_poisoned(q, k, v, bias, shape.scale), q, k, v, bias, shape.scale, generator)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_contiguous_and_misaligned_inputs(attention_op, generator, dtype):
    shape = LEVIT_ATTENTION_SHAPES[1]  # a downsample attention
    q, k, v, bias = model_inputs(shape, 3, dtype, generator)
    dense = [t.contiguous() for t in (q, k, v)]
    check(attention_into_poisoned(*dense, bias, shape.scale), *dense, bias, shape.scale, generator, "contiguous")
    # Views one element into their storage: the op copies them once to aligned tensors.
    shifted = []
    for t in (q, k, v):
        storage = torch.empty(t.numel() + 1, device="cuda", dtype=dtype)
        view = storage[1:].view(t.shape)
        view.copy_(t)
        shifted.append(view)
    assert shifted[0].data_ptr() % 16 != 0
    check(attention_into_poisoned(*shifted, bias, shape.scale), *shifted, bias, shape.scale, generator, "misaligned")


def test_runs_on_the_current_stream(attention_op, generator):
    shape = LEVIT_ATTENTION_SHAPES[0]
    q, k, v, bias = model_inputs(shape, 8, torch.float16, generator)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = attention_op(q, k, v, bias, shape.scale)
    side.synchronize()
    check(out, q, k, v, bias, shape.scale, generator)


def cuda(*size: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.ones(size, device="cuda", dtype=dtype)


@pytest.mark.parametrize(("q", "k", "v", "bias", "message"), [
    ((2, 16, 4, 24), (2, 16, 4, 24), (2, 16, 4, 32), (4, 16, 16), r"key \(q/k head\) size 24 is not supported"),
    ((2, 16, 4, 16), (2, 16, 4, 16), (2, 16, 4, 48), (4, 16, 16), "value head size 48 is not supported"),
    ((2, 16, 4, 16), (2, 257, 4, 16), (2, 257, 4, 32), (4, 16, 257), "257 keys are not supported"),
    ((2, 16, 4, 16), (2, 16, 4, 16), (2, 16, 4, 32), (4, 16, 15), r"shapes do not fit together .* bias \[4, 16, 15\]"),
    ((2, 16, 4, 16), (2, 16, 3, 16), (2, 16, 4, 32), (4, 16, 16), r"shapes do not fit together .* k \[2, 16, 3, 16\]"),
    ((2, 16, 64), (2, 16, 4, 16), (2, 16, 4, 32), (4, 16, 16), r"needs q \[B, Nq, H, Dq\].* q \[2, 16, 64\]"),
], ids=["key-dim", "value-dim", "keys", "bias", "heads", "rank"])
def test_unsupported_shapes_are_refused_by_name(attention_op, q, k, v, bias, message):
    with pytest.raises(RuntimeError, match=message):
        attention_op(cuda(*q), cuda(*k), cuda(*v), cuda(*bias), 0.25)


def test_unsupported_dtypes_and_layouts_are_refused(attention_op):
    args = [(2, 16, 4, 16), (2, 16, 4, 16), (2, 16, 4, 32), (4, 16, 16)]
    with pytest.raises(RuntimeError, match="float32 and float16 only"):
        attention_op(*(cuda(*s, dtype=torch.bfloat16) for s in args), 0.25)
    with pytest.raises(RuntimeError, match="must have one dtype"):
        attention_op(cuda(*args[0]), cuda(*args[1], dtype=torch.float32), cuda(*args[2]), cuda(*args[3]), 0.25)
    strided_q = cuda(2, 16, 4, 32)[..., ::2]
    with pytest.raises(RuntimeError, match=r"last axis of q, k and v must be contiguous"):
        attention_op(strided_q, cuda(*args[1]), cuda(*args[2]), cuda(*args[3]), 0.25)
    with pytest.raises(RuntimeError, match="bias must be contiguous"):
        attention_op(cuda(*args[0]), cuda(*args[1]), cuda(*args[2]), cuda(4, 16, 16).transpose(1, 2), 0.25)
    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        attention_op(*(torch.ones(s, dtype=torch.float16) for s in args), 0.25)
    with pytest.raises(RuntimeError, match=r"out must be \[2, 16, 128\]"):
        torch.ops.levit_trt.attention(*(cuda(*s) for s in args), 0.25, out=cuda(2, 16, 64))


def test_meta_kernel_gives_shape_and_dtype_without_running(attention_op):
    def meta(*size: int) -> torch.Tensor:
        return torch.empty(size, device="meta", dtype=torch.float16)

    out = attention_op(meta(8, 49, 12, 32), meta(8, 196, 12, 32), meta(8, 196, 12, 128), meta(12, 49, 196), 0.17)
    assert out.device.type == "meta" and out.shape == (8, 49, 12 * 128) and out.dtype == torch.float16


def projected_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A LeViT self-attention without its output projection: qkv(x), split into heads, the op."""
    batch, tokens, _ = x.shape
    q, k, v = (x @ weight).view(batch, tokens, 4, -1).split([16, 16, 32], dim=3)
    return plugins.plugin_attention(q, k, v, bias, 0.25)


@pytest.mark.parametrize(("backend", "dynamic"), [("inductor", False), ("aot_eager", True)])
def test_torch_compile_fullgraph(attention_op, generator, backend, dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(projected_attention, fullgraph=True, backend=backend, dynamic=dynamic)
    for batch in (2, 3):  # a second shape: recompiles, or reuses the dynamic graph
        x = torch.randn((batch, 49, 64), device="cuda", generator=generator).half()
        weight = (torch.randn((64, 256), device="cuda", generator=generator) / 8).half()
        bias = torch.randn((4, 49, 49), device="cuda", generator=generator).half()
        out = compiled(x, weight, bias)
        assert out.shape == (batch, 49, 128) and out.dtype == torch.float16
        qkv = (x @ weight).view(batch, 49, 4, -1)  # rounded to fp16 as the compiled graph's op input is
        q, k, v = qkv.split([16, 16, 32], dim=3)
        check(out, q, k, v, bias, 0.25, generator, f"{backend} batch {batch}")
