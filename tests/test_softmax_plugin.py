"""The PyTorch op `levit_trt::softmax` against float64 softmax, on a CUDA GPU.

Skipped (with the reason) where there is no CUDA device or the op library is not built. Every
check draws fresh random inputs, and outputs are poisoned with NaN before the op writes them.
"""

from __future__ import annotations

import math

import pytest
import torch

from levit_trt import plugins

pytestmark = pytest.mark.gpu

# fp32: the kernel accumulates in fp32 and uses expf; a few ulp (~1e-7) per element, norm-wise.
# fp16: the output is rounded to fp16 (relative step 2^-11 ~ 4.9e-4), so 2e-3 leaves headroom.
TOLERANCE = {torch.float32: 1e-6, torch.float16: 2e-3}
ROW_LENGTHS = (1, 16, 17, 49, 196, 1000, 1025, 4096)
LEADING_SHAPES = ((5,), (3, 7), (2, 3, 4))
DTYPES = (torch.float32, torch.float16)


def random_input(shape, dtype, generator, scale: float = 3.0) -> torch.Tensor:
    return (torch.randn(shape, device="cuda", generator=generator) * scale).to(dtype)


def relative_error(out: torch.Tensor, x: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| with the reference computed in float64 from the same input."""
    reference = torch.softmax(x.double(), dim=-1)
    return ((out.double() - reference).norm() / reference.norm()).item()


def poisoned_like(x: torch.Tensor) -> torch.Tensor:
    """An output buffer full of NaN: any element the kernel fails to write stays NaN."""
    return torch.full(x.shape, float("nan"), device=x.device, dtype=x.dtype)


def softmax_into_poisoned(x: torch.Tensor) -> torch.Tensor:
    out = poisoned_like(x)
    returned = torch.ops.levit_trt.softmax(x, out=out)
    assert returned.data_ptr() == out.data_ptr()
    return out


def test_functional_form_allocates_a_fresh_output(softmax_op, generator):
    x = random_input((3, 196), torch.float16, generator)
    out = softmax_op(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    assert out.data_ptr() != x.data_ptr()
    assert relative_error(out, x) <= TOLERANCE[torch.float16]


def test_out_must_match_the_input(softmax_op):
    x = torch.ones((2, 16), device="cuda")
    with pytest.raises(RuntimeError, match="out must match"):
        torch.ops.levit_trt.softmax(x, out=torch.empty((2, 16), device="cuda", dtype=torch.float16))
    with pytest.raises(RuntimeError, match="out must be contiguous"):
        torch.ops.levit_trt.softmax(x, out=torch.empty((16, 2), device="cuda").t())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("cols", ROW_LENGTHS)
def test_matches_float64_reference(softmax_op, generator, cols, leading, dtype):
    x = random_input((*leading, cols), dtype, generator)
    out = softmax_into_poisoned(x)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all(), "some outputs were not written (NaN poison left)"
    error = relative_error(out, x)
    assert error <= TOLERANCE[dtype], f"relative error {error:.3g} (seed {generator.initial_seed()})"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cols", ROW_LENGTHS)
def test_large_magnitudes(softmax_op, generator, cols, dtype):
    # fp32 rows scaled by 1e4; fp16 rows spread over most of its range (|x| < 6e4), where a
    # softmax without max subtraction overflows.
    if dtype == torch.float32:
        x = random_input((6, cols), dtype, generator, scale=1e4)
    else:
        x = ((torch.rand((6, cols), device="cuda", generator=generator) * 2 - 1) * 6e4).to(dtype)
    out = softmax_into_poisoned(x)
    assert torch.isfinite(out).all()
    error = relative_error(out, x)
    assert error <= TOLERANCE[dtype], f"relative error {error:.3g} (seed {generator.initial_seed()})"
    sums = out.double().sum(dim=-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=cols * TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_misaligned_rows_use_narrower_vectors(softmax_op, generator, dtype):
    # Views starting one element into their storage: contiguous, but not 16-byte aligned.
    x = random_input((33 * 196 + 1,), dtype, generator)[1:].view(33, 196)
    out = poisoned_like(torch.empty(33 * 196 + 1, device="cuda", dtype=dtype))[1:].view(33, 196)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0 and out.data_ptr() % 16 != 0
    torch.ops.levit_trt.softmax(x, out=out)
    assert torch.isfinite(out).all()
    assert relative_error(out, x) <= TOLERANCE[dtype]


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(64, 9, 49, 49), (300, 51, 17)], ids=str)
def test_large_tensors_of_odd_rows(softmax_op, generator, shape, dtype, misaligned):
    # More rows than a GPU keeps warps resident: the dispatcher stages such rows through shared
    # memory where both pointers are 16-byte aligned, and keeps them in registers where not.
    numel = math.prod(shape)
    offset = int(misaligned)
    x = random_input((numel + offset,), dtype, generator)[offset:].view(shape)
    out = poisoned_like(torch.empty(numel + offset, device="cuda", dtype=dtype))[offset:].view(shape)
    assert (x.data_ptr() % 16 != 0) == misaligned
    torch.ops.levit_trt.softmax(x, out=out)
    assert torch.isfinite(out).all(), "some outputs were not written (NaN poison left)"
    error = relative_error(out, x)
    assert error <= TOLERANCE[dtype], f"relative error {error:.3g} (seed {generator.initial_seed()})"


def test_non_contiguous_input_is_handled(softmax_op, generator):
    x = random_input((4, 196, 49), torch.float16, generator).transpose(1, 2)  # last axis strided
    assert not x.is_contiguous()
    out = softmax_op(x)
    assert out.shape == x.shape
    assert relative_error(out, x) <= TOLERANCE[torch.float16]


@pytest.mark.parametrize("shape", [(0, 196), (4, 0), (2, 0, 7), (0,)], ids=str)
def test_zero_sized_input(softmax_op, shape):
    x = torch.empty(shape, device="cuda", dtype=torch.float16)
    out = softmax_op(x)
    torch.cuda.synchronize()
    assert out.shape == x.shape and out.numel() == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.int32], ids=str)
def test_unsupported_dtype_is_refused(softmax_op, dtype):
    x = torch.ones((2, 16), device="cuda", dtype=dtype)
    with pytest.raises(RuntimeError, match="float32 and float16 only"):
        softmax_op(x)


def test_scalar_is_refused(softmax_op):
    with pytest.raises(RuntimeError, match="rank >= 1"):
        softmax_op(torch.tensor(1.0, device="cuda"))


def test_cpu_tensor_is_refused(softmax_op):
    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        softmax_op(torch.ones((2, 16)))


def test_runs_on_the_current_stream(softmax_op, generator):
    x = random_input((64, 196), torch.float32, generator)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = softmax_op(x)
    side.synchronize()
    assert relative_error(out, x) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("rows_per_group", [1, 2])
@pytest.mark.parametrize("warps", [1, 4, 8])
@pytest.mark.parametrize("lanes", [0, 1, 4, 16, 32])
@pytest.mark.parametrize("cols", [16, 49, 196, 1000])
def test_tuned_launch_shapes_compute_the_same(softmax_op, generator, rows_per_group, warps, lanes, cols):
    # 37 rows: not a multiple of any rows-per-block, so every configuration has a partial block.
    x = random_input((37, cols), torch.float16, generator)
    out = poisoned_like(x)
    vectors = cols // 8 if cols % 8 == 0 else cols // 4 if cols % 4 == 0 else cols  # widest 16-byte-or-less vector
    if lanes and lanes < 32 and vectors > 4 * lanes:  # narrow groups hold at most 4 vectors a lane
        with pytest.raises(RuntimeError, match="kernel launch failed"):
            torch.ops.levit_trt.softmax_tuned(x, out, rows_per_group, warps, lanes)
        return
    torch.ops.levit_trt.softmax_tuned(x, out, rows_per_group, warps, lanes)
    assert torch.isfinite(out).all()
    assert relative_error(out, x) <= TOLERANCE[torch.float16]


STAGED = 2  # SoftmaxPath::kStaged (plugins/softmax/softmax_launch.h)


def staged_tile_bytes(cols: int, dtype: torch.dtype, lanes: int, rows_per_group: int, warps: int) -> int:
    """Shared memory of one staged tile: each group's rows, rounded up to whole 16-byte chunks."""
    row_bytes = cols * torch.empty((), dtype=dtype).element_size()
    align = 16 // math.gcd(row_bytes, 16)
    return -(-(warps * 32 // lanes) * rows_per_group // align) * align * row_bytes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows_per_group", [1, 4])
@pytest.mark.parametrize("warps", [1, 4])
@pytest.mark.parametrize("lanes", [1, 8, 32])
@pytest.mark.parametrize("cols", [1, 16, 17, 49, 196, 1000])
def test_staged_path_computes_the_same(softmax_op, generator, cols, lanes, warps, rows_per_group, dtype):
    # 37 rows: tiles end part-way, and 37 odd rows are not a whole number of 16-byte chunks, so the
    # element-wise tail copies run too.
    x = random_input((37, cols), dtype, generator)
    out = poisoned_like(x)
    max_values_per_lane = 32 if lanes == 32 else 49
    if cols > lanes * max_values_per_lane or staged_tile_bytes(cols, dtype, lanes, rows_per_group, warps) > 48 * 1024:
        with pytest.raises(RuntimeError, match="kernel launch failed"):
            torch.ops.levit_trt.softmax_tuned(x, out, rows_per_group, warps, lanes, STAGED)
        return
    torch.ops.levit_trt.softmax_tuned(x, out, rows_per_group, warps, lanes, STAGED)
    assert torch.isfinite(out).all(), "some outputs were not written (NaN poison left)"
    error = relative_error(out, x)
    assert error <= TOLERANCE[dtype], f"relative error {error:.3g} (seed {generator.initial_seed()})"


@pytest.mark.parametrize("path", [0, STAGED], ids=["auto", "staged"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cols", ROW_LENGTHS)
def test_minus_infinity_entries_get_no_weight(softmax_op, generator, cols, dtype, path):
    # Masked scores: -inf entries come out 0 and the rest is the softmax of the others. The first
    # columns are masked in every row, so the copies of a row's first vector that the register kernel
    # computes on past the row's end are -inf too. A row of only -inf is NaN, as in torch.softmax.
    if path == STAGED and cols > 1024:
        pytest.skip("the staged kernel takes rows of up to 1024")
    x = random_input((37, cols), dtype, generator)
    mask = torch.rand(x.shape, device="cuda", generator=generator) < 0.3
    mask[:, :4] = True
    mask[:, -1] = False
    x = x.masked_fill(mask, float("-inf"))
    x[5] = float("-inf")
    out = poisoned_like(x)
    torch.ops.levit_trt.softmax_tuned(x, out, 0, 0, 0, path)
    assert torch.equal(out.isnan(), torch.softmax(x.double(), dim=-1).isnan())
    rows = torch.ones(37, dtype=torch.bool, device="cuda")
    rows[5] = False
    assert (out[rows][mask[rows]] == 0).all()
    error = relative_error(out[rows], x[rows])
    assert error <= TOLERANCE[dtype], f"relative error {error:.3g} (seed {generator.initial_seed()})"


def test_staged_path_refuses_misaligned_tensors(softmax_op, generator):
    x = random_input((8 * 49 + 1,), torch.float16, generator)[1:].view(8, 49)
    with pytest.raises(RuntimeError, match="kernel launch failed"):
        torch.ops.levit_trt.softmax_tuned(x, torch.empty_like(x), 0, 0, 0, STAGED)


@pytest.mark.parametrize("grid_blocks", [1, 3])
def test_capped_grid_covers_every_row(softmax_op, generator, grid_blocks):
    for cols, path in ((49, STAGED), (196, 1), (1025, 1)):
        x = random_input((300, cols), torch.float16, generator)
        out = poisoned_like(x)
        torch.ops.levit_trt.softmax_tuned(x, out, 0, 0, 0, path, grid_blocks)
        assert torch.isfinite(out).all(), f"cols {cols}: rows beyond the grid were not written"
        assert relative_error(out, x) <= TOLERANCE[torch.float16]


def test_meta_kernel_gives_shape_and_dtype_without_running(softmax_op):
    x = torch.empty((8, 6, 196, 196), device="meta", dtype=torch.float16)
    out = softmax_op(x)
    assert out.device.type == "meta" and out.shape == x.shape and out.dtype == x.dtype


def attention_like(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return plugins.plugin_softmax(scores * 0.25 + bias) * 2.0  # 0.25 and 2.0: exact in fp16


@pytest.mark.parametrize(("backend", "dynamic"), [("inductor", False), ("aot_eager", True)])
def test_torch_compile_fullgraph(softmax_op, generator, backend, dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(attention_like, fullgraph=True, backend=backend, dynamic=dynamic)
    for batch in (2, 3):  # a second shape: recompiles, or reuses the dynamic graph
        scores = random_input((batch, 4, 49, 49), torch.float16, generator)
        bias = random_input((4, 49, 49), torch.float16, generator)
        scaled = scores * 0.25 + bias  # rounded to fp16 once, as the compiled graph's op input is
        expected = torch.softmax(scaled.double(), dim=-1) * 2.0
        out = compiled(scores, bias)
        assert out.shape == scores.shape and out.dtype == torch.float16
        error = ((out.double() - expected).norm() / expected.norm()).item()
        assert error <= TOLERANCE[torch.float16]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_plugin_backend_matches_native_softmax(softmax_op, tmp_path, precision):
    from levit_trt.backends.base import ModelSource
    from levit_trt.backends.registry import create_backend
    from levit_trt.variants import resolve_variant
    from levit_trt.weights import parse_weights, synthetic_images

    source = ModelSource(resolve_variant("128S"), parse_weights("random"), tmp_path)
    native = create_backend("torch", source, precision, "cuda")
    plugin = create_backend("torch-plugin", source, precision, "cuda")
    images = native.prepare_input(synthetic_images(8, seed=61))
    expected, got = native(images).double(), plugin(images).double()
    if precision == "fp32":
        # Only the softmax differs, each within ~1e-7 relative: logits (std ~0.3) agree to ~1e-5.
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    else:
        # fp16 softmax outputs round to 2^-11 either way; the logits must stay essentially the same.
        cosine = torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0).item()
        assert cosine > 0.9999
        assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.75
