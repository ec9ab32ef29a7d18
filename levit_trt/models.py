"""A ready-to-run LeViT: weights applied, batch norms folded, attention biases fixed, attention form chosen.

Every backend starts from the same prepared model, so PyTorch, ONNX Runtime and TensorRT compute
the same function and their timings compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from levit_trt import plugins
from levit_trt.variants import Variant
from levit_trt.weights import WeightsSpec, create_model

SoftmaxImpl = Literal["native", "plugin"]
SOFTMAX_IMPLS: tuple[SoftmaxImpl, ...] = ("native", "plugin")
# explicit: q.k^T, scale, bias, softmax, .v as separate ops (what ONNX export writes; softmax swappable);
# sdpa: F.scaled_dot_product_attention with the bias as mask; fused: the `levit_trt::attention` op.
AttentionImpl = Literal["explicit", "sdpa", "fused"]
ATTENTION_IMPLS: tuple[AttentionImpl, ...] = ("explicit", "sdpa", "fused")


def native_softmax(scores: torch.Tensor) -> torch.Tensor:
    return scores.softmax(dim=-1)


def softmax_function(impl: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The last-axis softmax used inside attention: PyTorch's, or the `levit_trt::softmax` op."""
    if impl == "native":
        return native_softmax
    if impl == "plugin":
        from levit_trt.plugins import load_torch_op, plugin_softmax

        load_torch_op()  # fails here, with build instructions, rather than mid-forward
        return plugin_softmax
    raise ValueError(f"unknown softmax implementation {impl!r}; choose one of {', '.join(SOFTMAX_IMPLS)}")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """PyTorch's fused attention (flash / cuDNN / memory-efficient kernels) with the bias as additive mask."""
    batch, queries, heads, _ = q.shape
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=bias.to(q.dtype), scale=scale)
    return out.transpose(1, 2).reshape(batch, queries, heads * v.shape[-1])


def load_fused_attention() -> None:
    """Load `levit_trt::attention` now, so that a missing build fails here, not mid-forward."""
    plugins.load_attention_op()


def check_attention_impl(attention: str, softmax: str) -> None:
    """ValueError for an unknown attention form, or a softmax choice the form does not use."""
    if attention not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {attention!r}; choose one of {', '.join(ATTENTION_IMPLS)}")
    if softmax not in SOFTMAX_IMPLS:
        raise ValueError(f"unknown softmax implementation {softmax!r}; choose one of {', '.join(SOFTMAX_IMPLS)}")
    if attention != "explicit" and softmax != "native":
        raise ValueError(f"softmax={softmax!r} applies to the explicit attention form only, not to {attention!r}")


class PreparedAttention(nn.Module):
    """timm's LeViT `Attention`/`AttentionDownsample` (linear mode) with a dense bias buffer.

    timm computes `attention_biases[:, idxs]` on first use in eval mode and caches it in a dict:
    that write breaks CUDA-graph trees and hides the gather from exporters. Here the gathered
    bias is a registered buffer, computed once, so exports and graphs see a constant. The attention
    itself is one of ATTENTION_IMPLS (`attention`, set with `set_attention`), and each form is a
    class of its own (this one is the explicit form), because torch.compile does not guard a
    module's instance attributes: on torch 2.11 a copy whose attention function had been swapped
    reused the first copy's compiled code, so forms must differ by type. The explicit form's softmax
    is a function attribute, so the softmax plugin can stand in for PyTorch's (in a class of its own
    too: `PluginSoftmaxAttention`).
    """

    # Declared for type checkers: nn.Module's attribute lookup would type them as Tensor | Module.
    attention_bias: torch.Tensor
    scale: float
    softmax: Callable[[torch.Tensor], torch.Tensor]
    qkv: nn.Module
    kv: nn.Module
    q: nn.Module
    proj: nn.Module
    attention: ClassVar[AttentionImpl] = "explicit"  # each form class says which it is

    def __init__(self, source: nn.Module, softmax: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        timm_layer: Any = source  # timm's attributes, untyped
        if getattr(source, "use_conv", False):
            raise ValueError("only timm's linear-mode LeViT (levit_*, not levit_conv_*) is supported")
        self.downsample = hasattr(source, "kv")
        self.num_heads = timm_layer.num_heads
        self.key_dim = timm_layer.key_dim
        self.val_dim = timm_layer.val_dim
        self.scale = timm_layer.scale
        if self.downsample:
            self.kv, self.q = timm_layer.kv, timm_layer.q
        else:
            self.qkv = timm_layer.qkv
        self.proj = timm_layer.proj
        with torch.no_grad():
            bias = timm_layer.attention_biases[:, timm_layer.attention_bias_idxs].detach().clone()
        self.register_buffer("attention_bias", bias)
        self.softmax = softmax

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
               scale: float) -> torch.Tensor:
        """The two products, scale, bias and `self.softmax` as separate ops: the form ONNX export writes."""
        scores = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) * scale + bias
        attn = self.softmax(scores)
        return (attn @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(q.shape[0], -1, v.shape[2] * v.shape[3])

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as [B, N, H, D] views of the projections' outputs (the fused op reads them in place)."""
        batch, tokens, _ = x.shape
        if self.downsample:
            k, v = self.kv(x).view(batch, tokens, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=3)
            q = self.q(x).view(batch, -1, self.num_heads, self.key_dim)
        else:
            q, k, v = self.qkv(x).view(batch, tokens, self.num_heads, -1).split(
                [self.key_dim, self.key_dim, self.val_dim], dim=3)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)
        return self.proj(self.attend(q, k, v, self.attention_bias, self.scale))


class PluginSoftmaxAttention(PreparedAttention):
    """The explicit form with the `levit_trt::softmax` op as its softmax (the reference's plugin)."""


class SdpaAttention(PreparedAttention):
    """Attention as `F.scaled_dot_product_attention` with the bias as additive mask."""

    attention = "sdpa"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
               scale: float) -> torch.Tensor:
        return sdpa_attention(q, k, v, bias, scale)


class FusedAttention(PreparedAttention):
    """Attention as one `levit_trt::attention` call on the projections' q, k, v views.

    timm's `proj` is Sequential(Hardswish, Linear): the op applies the Hardswish to its output (one
    launch less per attention), and only the Linear runs after it.
    """

    attention = "fused"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
               scale: float) -> torch.Tensor:
        return plugins.plugin_attention(q, k, v, bias, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activation, *rest = self.proj.children()
        if not isinstance(activation, nn.Hardswish):
            return super().forward(x)
        q, k, v = self.heads(x)
        attended = plugins.plugin_attention(q, k, v, self.attention_bias, self.scale, hardswish=True)
        for layer in rest:
            attended = layer(attended)
        return attended


_LAYER_CLASSES: dict[tuple[str, str], type[PreparedAttention]] = {
    ("explicit", "native"): PreparedAttention,
    ("explicit", "plugin"): PluginSoftmaxAttention,
    ("sdpa", "native"): SdpaAttention,
    ("fused", "native"): FusedAttention,
}


def _is_attention(module: nn.Module) -> bool:
    return hasattr(module, "attention_biases") and hasattr(module, "attention_bias_idxs")


def _is_foldable_norm(module: nn.Module) -> bool:
    # timm's ConvNorm, LinearNorm and NormLinear pair a conv/linear with a batch norm and know
    # how to fold it (`fuse()`); that is the whole set of batch norms in LeViT.
    return type(module).__name__ in {"ConvNorm", "LinearNorm", "NormLinear"} and hasattr(module, "fuse")


@torch.no_grad()
def prepare_model(model: nn.Module, softmax: str = "native", attention: str = "explicit") -> nn.Module:
    """Fold every batch norm, fix the attention biases and install the attention form, in place (eval mode)."""
    check_attention_impl(attention, softmax)
    model.eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_foldable_norm(child):
                setattr(parent, name, cast(Callable[[], nn.Module], child.fuse)())
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_attention(child):
                setattr(parent, name, PreparedAttention(child, native_softmax))
    leftover = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise RuntimeError(f"batch norms left unfolded in the prepared model: {leftover[:3]}")
    return _set_form(model, attention, softmax).eval()


def to_device(model: nn.Module, device: torch.device | str, dtype: torch.dtype,
              channels_last_stem: bool | None = None) -> nn.Module:
    """Move a prepared model to `device` and `dtype`; on CUDA (or where asked) with a channels-last stem.

    timm turns the stem's [B, C, H, W] output into tokens with flatten(2).transpose(1, 2): from NCHW
    memory a strided view, which every residual add and projection of stage 1 inherits (on the H200,
    LeViT-384 fp16 batch 16: 21 non-vectorised adds, 0.21 ms of 0.99 ms of kernels). Stem weights in
    channels-last memory make its convolutions write NHWC, from which the tokens are contiguous. Not
    on the CPU by default: there oneDNN's channels-last fp32 convolutions round more (LeViT-256
    stand-in, fp32 against float64: 8.2e-5 of the logit std, against 2.5e-5 in NCHW).
    """
    device = torch.device(device)
    model = model.to(device, dtype)
    if channels_last_stem is None:
        channels_last_stem = device.type == "cuda"
    if channels_last_stem:
        cast(nn.Module, model.stem).to(memory_format=torch.channels_last)
    return model


def prepared_attention_layers(model: nn.Module) -> list[PreparedAttention]:
    """Every prepared attention layer of `model`; ValueError if it has none (not a prepared model)."""
    layers = [m for m in model.modules() if isinstance(m, PreparedAttention)]
    if not layers:
        raise ValueError("model has no prepared attention layers; call prepare_model first")
    return layers


def _set_form(model: nn.Module, attention: str, softmax: str) -> nn.Module:
    """Give every prepared attention layer of `model` the class of (attention, softmax), checked first."""
    check_attention_impl(attention, softmax)
    layers = prepared_attention_layers(model)
    if attention == "fused":
        load_fused_attention()
    softmax_fn = softmax_function(softmax)
    for layer in layers:
        layer.__class__ = _LAYER_CLASSES[(attention, softmax)]
        layer.softmax = softmax_fn
    return model


def set_softmax(model: nn.Module, softmax: str) -> nn.Module:
    """Switch every prepared attention layer of `model` (explicit form) to another softmax implementation."""
    return _set_form(model, "explicit", softmax)


def set_attention(model: nn.Module, attention: str) -> nn.Module:
    """Switch every prepared attention layer of `model` to another attention form (ATTENTION_IMPLS)."""
    return _set_form(model, attention, "native")


def attention_forms(model: nn.Module) -> set[str]:
    """The attention forms the prepared layers of `model` use (one, unless set per layer by hand)."""
    return {layer.attention for layer in prepared_attention_layers(model)}


def load_model(variant: Variant, weights: WeightsSpec, softmax: str = "native", attention: str = "explicit"
               ) -> nn.Module:
    """A prepared fp32 CPU model of `variant` with `weights`."""
    return prepare_model(create_model(variant, weights), softmax=softmax, attention=attention)
