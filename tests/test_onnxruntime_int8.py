"""The onnxruntime backend's INT8 on CPU: the Q/DQ model of a policy, calibration named in describe()."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch

from levit_trt.backends.base import ModelSource, UnsupportedCombination
from levit_trt.backends.registry import create_backend
from levit_trt.calibration import synthetic_calibration_set, write_calibration_set
from levit_trt.data import write_synthetic_imagenet
from levit_trt.precision_policy import PolicyError
from levit_trt.weights import synthetic_images

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def source(model_source: Callable[[str], ModelSource]) -> ModelSource:
    return model_source("128S")


def test_int8_runs_the_default_policy_calibrated_on_synthetic_images(source: ModelSource) -> None:
    backend = create_backend("onnxruntime", source, "int8", "cpu", calib_images=16)
    info = backend.describe()
    assert info["precision"] == "int8" and info["int8_policy"] == "default"
    assert info["int8_path"].startswith("qdq")
    assert info["int8_calibration"] == synthetic_calibration_set(source.variant, 16).identity
    assert info["int8_calibration_source"] == "synthetic (16 images, seed 0)"
    assert info["int8_float_op_types"] == ["HardSigmoid", "HardSwish", "Softmax"]
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(backend.onnx_path)).graph.node)
    images = synthetic_images(16, seed=1000)
    with torch.no_grad():
        reference = source.torch_model()(images)
    logits = backend(backend.prepare_input(images))
    assert logits.shape == (16, 1000) and torch.isfinite(logits).all()
    # test_quantize.py measures and bounds each policy's agreement; here only that the backend runs that
    # model: measured 0.964 (stand-in recipe 3); logits of other images score a cosine of about 0.12.
    cosine = torch.nn.functional.cosine_similarity(logits.double(), reference.double(), dim=1).mean()
    assert cosine > 0.85


def test_int8_from_a_calibration_folder_and_another_policy(source: ModelSource, tmp_path: Path) -> None:
    root = write_synthetic_imagenet(tmp_path / "imagenet", num_classes=2, images_per_class=2, split="train")
    calibration = write_calibration_set(root, source.variant, 4, tmp_path / "calib", progress=False)
    backend = create_backend("onnxruntime", source, "int8", "cpu", policy="all-int8", calib_dir=tmp_path / "calib")
    info = backend.describe()
    assert info["int8_policy"] == "all-int8" and info["int8_calibration"] == calibration.identity
    assert str(root.resolve()) in info["int8_calibration_source"]


def test_int8_option_errors(source: ModelSource) -> None:
    with pytest.raises(PolicyError, match="unknown precision policy 'fast'"):
        create_backend("onnxruntime", source, "int8", "cpu", policy="fast")
    with pytest.raises(ValueError, match="do nothing for precision fp32"):
        create_backend("onnxruntime", source, "fp32", "cpu", policy="all-int8")
    with pytest.raises(UnsupportedCombination, match="does not run int8 on cuda"):
        create_backend("onnxruntime", source, "int8", "cuda")
