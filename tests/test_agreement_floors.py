"""The agreement floors catch realistic faults (issue 16): each fault fails its precision's floor,
while the same computation without the fault meets it.

Faults: (a) one weight Q/DQ scale doubled in one layer of the INT8 ONNX, (b) one attention layer's
bias dropped, (c) softmax over the wrong axis in one head group of one attention layer, (d) the fp16
logits of another batch. LeViT-128S, the stand-in weights, the agreement suite's images.

fp16 on the CPU is slow (seconds per 16 images): the intact model runs once over the suite's 64
images, each faulty one over the first FAULT_IMAGES, against the same images' intact agreement.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from accuracy.conftest import AGREEMENT_IMAGES, AGREEMENT_SEED
from levit_trt.backends.base import ModelSource
from levit_trt.backends.onnxruntime import OnnxRuntimeBackend
from levit_trt.backends.registry import create_backend
from levit_trt.export import INPUT_NAME, OUTPUT_NAME
from levit_trt.models import PreparedAttention
from levit_trt.stability import cast_logits
from levit_trt.thresholds import AGREEMENT_FLOORS, Agreement, agreement
from levit_trt.weights import create_model, synthetic_images

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def source(model_source: Callable[[str], ModelSource]) -> ModelSource:
    return model_source("128S")


@pytest.fixture(scope="module")
def images(source: ModelSource) -> torch.Tensor:
    return synthetic_images(AGREEMENT_IMAGES, source.variant.input_size, seed=AGREEMENT_SEED)


@pytest.fixture(scope="module")
def reference(source: ModelSource, images: torch.Tensor) -> torch.Tensor:
    """timm's own model in fp32, as the agreement suite's reference."""
    with torch.inference_mode():
        return create_model(source.variant, source.weights)(images)


# A fault must fail the floor on these; one image of 32 is 0.031 of top-1, above the fp16 floor's 0.02.
FAULT_IMAGES = 32


def _onnx_logits(path: Path, images: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.cat([torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: chunk.numpy()})[0])
                      for chunk in images.split(16)])


def _check(faulty: Agreement, intact: Agreement, precision: str) -> None:
    floor = AGREEMENT_FLOORS[precision]
    print(f"{precision} floor {floor}: intact {intact}, faulty {faulty}")
    assert intact.meets(floor), f"the intact {precision} computation misses its floor: {intact}"
    assert not faulty.meets(floor), f"the fault passes the {precision} floor: {faulty}"


@pytest.fixture(scope="module")
def fp16_logits(source: ModelSource, images: torch.Tensor) -> torch.Tensor:
    """The intact prepared model cast to fp16 on the CPU, as tools/agreement_floors_table.py measures fp16."""
    return cast_logits(source.torch_model(), images, torch.float16)


@pytest.fixture(scope="module")
def fp16_intact(fp16_logits: torch.Tensor, reference: torch.Tensor) -> Agreement:
    """On the images the faults run on; the whole suite's 64 must meet the floor as well."""
    assert agreement(fp16_logits, reference).meets(AGREEMENT_FLOORS["fp16"])
    return agreement(fp16_logits[:FAULT_IMAGES], reference[:FAULT_IMAGES])


def _faulty_fp16(model: torch.nn.Module, images: torch.Tensor, reference: torch.Tensor) -> Agreement:
    return agreement(cast_logits(model, images[:FAULT_IMAGES], torch.float16), reference[:FAULT_IMAGES])


def _attention_layers(model: torch.nn.Module) -> list[PreparedAttention]:
    return [m for m in model.modules() if isinstance(m, PreparedAttention)]


# Layer 0: the first block's attention, a residual branch (the hard case; a downsampling
# attention writes the trunk and fails by far more).
@pytest.mark.parametrize("layer", [0])
def test_dropped_attention_bias_fails_the_fp16_floor(layer: int, source: ModelSource, images: torch.Tensor,
                                                    reference: torch.Tensor, fp16_intact: Agreement) -> None:
    model = source.torch_model()
    attention = _attention_layers(model)[layer]
    attention.attention_bias.zero_()
    _check(_faulty_fp16(model, images, reference), fp16_intact, "fp16")


@pytest.mark.parametrize("layer", [0])
def test_softmax_over_the_wrong_axis_in_one_head_group_fails_the_fp16_floor(
        layer: int, source: ModelSource, images: torch.Tensor, reference: torch.Tensor,
        fp16_intact: Agreement) -> None:
    model = source.torch_model()
    attention = _attention_layers(model)[layer]
    group = attention.num_heads // 2  # the first half of the heads

    def wrong_axis(scores: torch.Tensor) -> torch.Tensor:
        return torch.cat([scores[:, :group].softmax(dim=-2), scores[:, group:].softmax(dim=-1)], dim=1)

    attention.softmax = wrong_axis
    _check(_faulty_fp16(model, images, reference), fp16_intact, "fp16")


def test_fp16_logits_of_another_batch_fail_the_fp16_floor(fp16_logits: torch.Tensor, reference: torch.Tensor,
                                                         fp16_intact: Agreement) -> None:
    """A runner that returns the logits of the suite's other 32 images for the first 32."""
    other_batch = fp16_logits[FAULT_IMAGES:2 * FAULT_IMAGES]
    _check(agreement(other_batch, reference[:FAULT_IMAGES]), fp16_intact, "fp16")


def _double_weight_scale(model: onnx.ModelProto, op_type: str, index: int) -> str:
    """Double the weight DequantizeLinear scale of the `index`-th `op_type` node with INT8 weights;
    returns the node's name."""
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name: init for init in model.graph.initializer}

    def weight_dequantize(node: onnx.NodeProto) -> onnx.NodeProto | None:
        producer = producers.get(node.input[1])
        is_weight = producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in initializers
        return producer if is_weight else None

    layer = [node for node in model.graph.node if node.op_type == op_type and weight_dequantize(node)][index]
    dequantize = weight_dequantize(layer)
    assert dequantize is not None
    scale = initializers[dequantize.input[1]]
    scale.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(scale), scale.name))
    return layer.name


@pytest.fixture(scope="module")
def int8_onnx(source: ModelSource) -> Path:
    """The onnxruntime INT8 backend's Q/DQ model: default policy, default calibration."""
    backend = create_backend("onnxruntime", source, "int8", "cpu")
    assert isinstance(backend, OnnxRuntimeBackend)
    return backend.onnx_path


@pytest.fixture(scope="module")
def int8_intact(int8_onnx: Path, images: torch.Tensor, reference: torch.Tensor) -> Agreement:
    return agreement(_onnx_logits(int8_onnx, images), reference)


# The first Conv is the stem's first layer; the eleventh weighted MatMul (levit_128s: 4 per block,
# 2 blocks, then the downsampling attention's kv and q) that attention's output projection, which
# writes the trunk. A doubled scale in a residual branch (the first block's projection, MatMul 1)
# measured 0.547 / 0.9496, under the floor's cosine by only 0.003 and above it once it was set from
# the measured range: the INT8 floor is too loose to catch faults within one residual branch.
@pytest.mark.parametrize(("op_type", "index"), [("Conv", 0), ("MatMul", 10)])
def test_one_doubled_qdq_scale_fails_the_int8_floor(op_type: str, index: int, int8_onnx: Path, images: torch.Tensor,
                                                    reference: torch.Tensor, int8_intact: Agreement,
                                                    tmp_path: Path) -> None:
    model = onnx.load(str(int8_onnx))
    print("doubled the weight scale of", _double_weight_scale(model, op_type, index))
    onnx.save(model, str(tmp_path / "faulty.onnx"))
    _check(agreement(_onnx_logits(tmp_path / "faulty.onnx", images), reference), int8_intact, "int8")
