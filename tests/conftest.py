"""Fixtures of the GPU op tests: each op loaded once (or a skip naming why), and a fresh CUDA generator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from levit_trt import plugins


def _loaded_cuda_op(load: Callable[[], Any], what: str) -> Any:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    try:
        return load()
    except plugins.PluginNotBuiltError as error:
        pytest.skip(f"{what} library not built: {error}")


@pytest.fixture(scope="session")
def softmax_op() -> Any:
    return _loaded_cuda_op(plugins.load_torch_op, "softmax op")


@pytest.fixture(scope="session")
def attention_op() -> Any:
    return _loaded_cuda_op(plugins.load_attention_op, "attention op")


@pytest.fixture
def generator() -> torch.Generator:
    seed = torch.seed()  # fresh inputs each run; the seed is in the failure message
    return torch.Generator(device="cuda").manual_seed(seed)
