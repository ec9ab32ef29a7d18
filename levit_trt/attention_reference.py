"""Inputs laid out as LeViT's projections write them, and the float64 attention they must give.

The one definition of both for the fused attention op's tests and its GPU check tool: q, k and v
are the strided views `PreparedAttention` takes of its qkv / kv and q projections' outputs, and
the reference is the contract's formula evaluated in float64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from levit_trt.attention_shapes import AttentionShape

if TYPE_CHECKING:
    import torch


def model_inputs(shape: AttentionShape, batch: int, dtype: torch.dtype, generator: torch.Generator | None = None,
                 bias_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q [B,Nq,H,Dq], k [B,Nk,H,Dq], v [B,Nk,H,Dv] as views of packed projections, and bias [H,Nq,Nk]."""
    import torch

    h, dq, dv = shape.heads, shape.key_dim, shape.value_dim
    device = generator.device if generator is not None else torch.device("cuda")

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, device=device, generator=generator).to(dtype)

    if shape.downsample:
        k, v = randn(batch, shape.keys, h * (dq + dv)).view(batch, shape.keys, h, -1).split([dq, dv], dim=3)
        q = randn(batch, shape.queries, h * dq).view(batch, shape.queries, h, dq)
    else:
        q, k, v = randn(batch, shape.keys, h * (2 * dq + dv)).view(batch, shape.keys, h, -1).split([dq, dq, dv], dim=3)
    bias = (torch.randn((h, shape.queries, shape.keys), device=device, generator=generator) * bias_scale).to(dtype)
    return q, k, v, bias


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """(softmax(q k^T * scale + bias) v) as [B, Nq, H*Dv], in float64."""
    import torch

    q, k, v, bias = (t.double() for t in (q, k, v, bias))
    scores = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) * scale + bias
    out = torch.softmax(scores, dim=-1) @ v.permute(0, 2, 1, 3)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    """||out - expected|| / ||expected||, in float64."""
    return ((out.double() - expected).norm() / expected.norm()).item()
