"""The CUDA device an engine is built for or runs on, as PyTorch sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from levit_trt.tensorrt.options import GpuIdentity

if TYPE_CHECKING:
    import torch


def current_gpu(device: torch.device) -> GpuIdentity:
    import torch

    props = torch.cuda.get_device_properties(device)
    return GpuIdentity(props.name, f"{props.major}.{props.minor}")


def cuda_device(device: torch.device | str) -> torch.device:
    """`device` with its index filled in, so it compares equal to a tensor's device."""
    import torch

    resolved = torch.device(device)
    if resolved.type != "cuda":
        raise ValueError(f"TensorRT runs on CUDA devices, not {resolved}")
    return torch.device("cuda", resolved.index if resolved.index is not None else torch.cuda.current_device())
