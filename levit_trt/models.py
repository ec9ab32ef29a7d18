"""A ready-to-run LeViT: weights applied, batch norms folded, attention biases fixed, softmax chosen.

Every backend starts from the same prepared model, so PyTorch, ONNX Runtime and TensorRT compute
the same function and their timings compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from levit_trt.variants import Variant
from levit_trt.weights import WeightsSpec, create_model

SoftmaxImpl = Literal["native", "plugin"]
SOFTMAX_IMPLS: tuple[SoftmaxImpl, ...] = ("native", "plugin")


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


class PreparedAttention(nn.Module):
    """timm's LeViT `Attention`/`AttentionDownsample` (linear mode) with a dense bias buffer.

    timm computes `attention_biases[:, idxs]` on first use in eval mode and caches it in a dict:
    that write breaks CUDA-graph trees and hides the gather from exporters. Here the gathered
    bias is a registered buffer, computed once, so exports and graphs see a constant; and the
    softmax is a swappable function so the plugin kernel can stand in for PyTorch's.
    """

    def __init__(self, source: nn.Module, softmax: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        if getattr(source, "use_conv", False):
            raise ValueError("only timm's linear-mode LeViT (levit_*, not levit_conv_*) is supported")
        self.downsample = hasattr(source, "kv")
        self.num_heads = source.num_heads
        self.key_dim = source.key_dim
        self.val_dim = source.val_dim
        self.val_attn_dim = source.val_attn_dim
        self.scale = source.scale
        if self.downsample:
            self.kv, self.q = source.kv, source.q
        else:
            self.qkv = source.qkv
        self.proj = source.proj
        with torch.no_grad():
            bias = source.attention_biases[:, source.attention_bias_idxs].detach().clone()
        self.register_buffer("attention_bias", bias)
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        if self.downsample:
            k, v = self.kv(x).view(batch, tokens, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=3)
            q = self.q(x).view(batch, -1, self.num_heads, self.key_dim).permute(0, 2, 1, 3)
        else:
            q, k, v = self.qkv(x).view(batch, tokens, self.num_heads, -1).split(
                [self.key_dim, self.key_dim, self.val_dim], dim=3)
            q = q.permute(0, 2, 1, 3)
        scores = q @ k.permute(0, 2, 3, 1) * self.scale + self.attention_bias
        attn = self.softmax(scores)
        out = (attn @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(batch, -1, self.val_attn_dim)
        return self.proj(out)


def _is_attention(module: nn.Module) -> bool:
    return hasattr(module, "attention_biases") and hasattr(module, "attention_bias_idxs")


def _is_foldable_norm(module: nn.Module) -> bool:
    # timm's ConvNorm, LinearNorm and NormLinear pair a conv/linear with a batch norm and know
    # how to fold it (`fuse()`); that is the whole set of batch norms in LeViT.
    return type(module).__name__ in {"ConvNorm", "LinearNorm", "NormLinear"} and hasattr(module, "fuse")


@torch.no_grad()
def prepare_model(model: nn.Module, softmax: str = "native") -> nn.Module:
    """Fold every batch norm, fix the attention biases and install the softmax, in place (eval mode)."""
    model.eval()
    softmax_fn = softmax_function(softmax)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_foldable_norm(child):
                setattr(parent, name, child.fuse())
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_attention(child):
                setattr(parent, name, PreparedAttention(child, softmax_fn))
    leftover = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise RuntimeError(f"batch norms left unfolded in the prepared model: {leftover[:3]}")
    return model.eval()


def set_softmax(model: nn.Module, softmax: str) -> nn.Module:
    """Switch every prepared attention layer of `model` to another softmax implementation."""
    softmax_fn = softmax_function(softmax)
    layers = [m for m in model.modules() if isinstance(m, PreparedAttention)]
    if not layers:
        raise ValueError("model has no prepared attention layers; call prepare_model first")
    for layer in layers:
        layer.softmax = softmax_fn
    return model


def load_model(variant: Variant, weights: WeightsSpec, softmax: str = "native") -> nn.Module:
    """A prepared fp32 CPU model of `variant` with `weights`."""
    return prepare_model(create_model(variant, weights), softmax=softmax)
