"""The prepared model computes timm's function, has no batch norms, and has input-dependent logits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from levit_trt import models, plugins
from levit_trt.attention_reference import relative_error
from levit_trt.models import (
    PreparedAttention,
    attention_forms,
    prepare_model,
    set_attention,
    set_softmax,
    softmax_function,
    to_device,
)
from levit_trt.variants import resolve_variant
from levit_trt.weights import create_model, parse_weights, synthetic_images


@pytest.fixture(scope="module")
def timm_model() -> nn.Module:
    return create_model(resolve_variant("128S"), parse_weights("random"))


def test_prepared_model_matches_unprepared_timm_model(timm_model: nn.Module) -> None:
    prepared = prepare_model(copy.deepcopy(timm_model))
    images = synthetic_images(8, seed=21)
    with torch.no_grad():
        # A float64 copy: timm caches attention biases per device on first use, and a cast of the
        # shared fixture would leave that cache in the other dtype for later tests.
        reference = copy.deepcopy(timm_model).double()(images.double())
        got = prepared(images).double()
    # Folding changes float32 rounding only: measured max diff 9.1e-6 on logits of std 1.07 (stand-in recipe 3).
    assert (got - reference).abs().max() < 1e-4


def test_prepared_model_has_no_batch_norm_and_fixed_biases(timm_model: nn.Module) -> None:
    prepared = prepare_model(copy.deepcopy(timm_model))
    assert not [m for m in prepared.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    attention = [m for m in prepared.modules() if isinstance(m, PreparedAttention)]
    assert len(attention) == 2 + 3 + 4 + 2  # 128S: depths (2, 3, 4) plus two downsampling attentions
    assert all("attention_bias" in dict(m.named_buffers()) for m in attention)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_token_stream_is_contiguous(timm_model: nn.Module, dtype: torch.dtype) -> None:
    # timm's flatten(2).transpose(1, 2) of an NCHW stem output is a strided view, and stage 1's residual
    # adds and projections would all run on transposed memory; the channels-last stem that to_device
    # gives on CUDA (asked for here on the CPU) prevents that.
    prepared = to_device(prepare_model(copy.deepcopy(timm_model)), "cpu", dtype, channels_last_stem=True)
    inputs: list[torch.Tensor] = []
    for block in prepared.modules():
        if type(block).__name__ in {"LevitBlock", "LevitDownsample"}:
            block.register_forward_hook(lambda _module, args, _out: inputs.append(args[0]))
    with torch.no_grad():
        prepared(synthetic_images(2, seed=23).to(dtype))
    assert len(inputs) == 2 + 3 + 4 + 2
    strided = [tuple(t.stride()) for t in inputs if not t.is_contiguous()]
    assert not strided, f"block inputs in strided memory: {strided}"


def test_to_device_keeps_the_cpu_stem_nchw_unless_asked(timm_model: nn.Module) -> None:
    # On the CPU the stem stays NCHW (oneDNN's channels-last fp32 convolutions round 4x more); on CUDA
    # (not here) it goes channels-last by default.
    def stem_weights(model: nn.Module) -> list[torch.Tensor]:
        return [p for p in model.stem.parameters() if p.dim() == 4]

    cpu = to_device(prepare_model(copy.deepcopy(timm_model)), "cpu", torch.float32)
    assert all(w.is_contiguous() for w in stem_weights(cpu))
    asked = to_device(prepare_model(copy.deepcopy(timm_model)), "cpu", torch.float32, channels_last_stem=True)
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
               for w in stem_weights(asked))


def test_random_weights_are_not_degenerate(timm_model: nn.Module) -> None:
    """Logits must depend on the image, or parity tests on them prove nothing."""
    images = synthetic_images(16, seed=22)
    with torch.no_grad():
        logits = timm_model(images)
    assert len(set(logits.argmax(1).tolist())) >= 8  # measured (recipe 3): 12 distinct top-1 classes of 16
    assert logits.std(dim=0).mean() > 0.5 * logits.std()  # variation across images, not a constant: measured 0.84


def test_unknown_softmax_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown softmax implementation 'fast'"):
        softmax_function("fast")


def test_set_softmax_swaps_the_function(timm_model: nn.Module) -> None:
    prepared = prepare_model(copy.deepcopy(timm_model))
    calls = []

    def counting(scores: torch.Tensor) -> torch.Tensor:
        calls.append(scores.shape)
        return scores.softmax(-1)

    for module in prepared.modules():
        if isinstance(module, PreparedAttention):
            module.softmax = counting
    with torch.no_grad():
        prepared(synthetic_images(1))
    assert len(calls) == 11
    set_softmax(prepared, "native")
    with pytest.raises(ValueError, match="no prepared attention layers"):
        set_softmax(nn.Linear(2, 2), "native")


def float64_reference(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The explicit form of `model` in float64: the reference every attention form is judged against."""
    with torch.no_grad():
        return set_attention(copy.deepcopy(model), "explicit").double()(images.double())


def test_sdpa_form_matches_float64_explicit_form(timm_model: nn.Module, monkeypatch) -> None:
    prepared = prepare_model(copy.deepcopy(timm_model), attention="sdpa")
    assert attention_forms(prepared) == {"sdpa"}
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs["attn_mask"].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(models.F, "scaled_dot_product_attention", counting)
    images = synthetic_images(4, seed=23)
    reference = float64_reference(prepared, images)
    with torch.no_grad():
        got = prepared(images)
    assert len(calls) == 11 and calls[0] == (4, 196, 196)  # every attention went through SDPA, with its bias
    # fp32 against float64: measured 7.5e-7 on recipe 3 (the explicit fp32 form is off by the same); a missing scale,
    # bias or a head mix-up is off by > 1e-1.
    assert relative_error(got, reference) < 1e-5


def contract_attention(calls: list[dict[str, object]]):
    """A pure-torch `levit_trt::attention` per the contract that records what it was given and checks it."""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                  hardswish: bool = False) -> torch.Tensor:
        batch, queries, heads, key_dim = q.shape
        assert k.shape[:1] + k.shape[2:] == (batch, heads, key_dim) and v.shape[:3] == k.shape[:3]
        assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        assert bias.shape == (heads, queries, k.shape[1]) and bias.is_contiguous()
        assert q.dtype == k.dtype == v.dtype == bias.dtype
        calls.append({"q": q, "k": k, "v": v, "scale": scale, "hardswish": hardswish})
        weights = torch.softmax(q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) * scale + bias, -1)
        out = (weights @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(batch, queries, heads * v.shape[-1])
        return torch.nn.functional.hardswish(out) if hardswish else out

    return attention


def test_fused_form_passes_the_projection_views(timm_model: nn.Module, monkeypatch) -> None:
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(plugins, "load_attention_op", lambda: None)
    monkeypatch.setattr(plugins, "plugin_attention", contract_attention(calls))
    prepared = prepare_model(copy.deepcopy(timm_model), attention="fused")
    images = synthetic_images(2, seed=24)
    reference = float64_reference(prepared, images)
    with torch.no_grad():
        got = prepared(images)
    assert len(calls) == 11
    # The op applies the projection's Hardswish (the model must then skip it: applied twice, or not
    # at all, the logits are off by far more than the tolerance below).
    assert all(call["hardswish"] for call in calls)
    first, downsample = calls[0], calls[2]  # 128S: two attentions, then stage 1's downsampling attention
    q, k, v = first["q"], first["k"], first["v"]
    assert isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
    # Self-attention: q, k, v are views into the qkv output [B, 196, 4 * (16 + 16 + 32)], read in place.
    row = 4 * (16 + 16 + 32)
    assert q.shape == (2, 196, 4, 16) and v.shape == (2, 196, 4, 32)
    assert q.stride() == k.stride() == v.stride() == (196 * row, row, 64, 1)
    assert k.data_ptr() - q.data_ptr() == 16 * q.element_size() and v.data_ptr() - q.data_ptr() == 32 * q.element_size()
    assert first["scale"] == 16 ** -0.5
    # Downsample: k, v are views into kv [B, 196, 8 * (16 + 64)]; q is the q projection [B, 49, 8 * 16].
    dq, dk, dv = downsample["q"], downsample["k"], downsample["v"]
    assert isinstance(dq, torch.Tensor) and isinstance(dk, torch.Tensor) and isinstance(dv, torch.Tensor)
    assert dq.shape == (2, 49, 8, 16) and dq.is_contiguous()
    assert dk.stride() == dv.stride() == (196 * 640, 640, 80, 1) and dv.shape == (2, 196, 8, 64)
    # Same function: fp32 against float64 as in the SDPA test.
    assert relative_error(got, reference) < 1e-5


def test_unknown_attention_form_is_refused(timm_model: nn.Module) -> None:
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'; choose one of explicit, sdpa, fused"):
        prepare_model(copy.deepcopy(timm_model), attention="flash")
    with pytest.raises(ValueError, match="softmax='plugin' applies to the explicit attention form only"):
        prepare_model(copy.deepcopy(timm_model), softmax="plugin", attention="sdpa")
    with pytest.raises(ValueError, match="no prepared attention layers"):
        set_attention(nn.Linear(2, 2), "sdpa")


def test_fused_form_without_the_op_says_how_to_build_it(timm_model: nn.Module, monkeypatch, tmp_path) -> None:
    if hasattr(torch.ops.levit_trt, "attention"):
        pytest.skip("the attention op is loaded in this process already")
    monkeypatch.setenv(plugins.PLUGIN_DIR_ENV, str(tmp_path))  # an empty plugin directory
    with pytest.raises(plugins.PluginNotBuiltError, match="cmake"):
        set_attention(prepare_model(copy.deepcopy(timm_model)), "fused")


def test_torch_compile_traces_each_form_of_its_own(timm_model: nn.Module, monkeypatch) -> None:
    """Compiling a second copy of the model in another form must trace that form, not reuse the first.

    torch.compile does not guard a module's instance attributes: on torch 2.11, a copy whose
    attention function attribute had been swapped reused the first copy's compiled code (the
    "sdpa" and "fused" compiles took 0.0 s and timed as the explicit one). Forms are classes now.
    Here the sdpa form is made to return zeros, so reusing the explicit form's code shows.
    """
    def zero_attention(q, k, v, bias, scale):
        return torch.zeros(q.shape[0], q.shape[1], q.shape[2] * v.shape[3], dtype=q.dtype)

    monkeypatch.setattr(models, "sdpa_attention", zero_attention)
    torch._dynamo.reset()
    prepared = prepare_model(copy.deepcopy(timm_model))
    images = synthetic_images(2, seed=23)
    with torch.no_grad():
        explicit = torch.compile(copy.deepcopy(prepared), backend="eager", fullgraph=True)(images)
        zeroed = set_attention(copy.deepcopy(prepared), "sdpa")
        expected = zeroed(images)
        got = torch.compile(zeroed, backend="eager", fullgraph=True)(images)
    torch._dynamo.reset()
    assert (expected - explicit).abs().max() > 1e-2  # the zeroed form computes another function
    torch.testing.assert_close(got, expected)
