"""Q/DQ quantization: the TensorRT form, float nodes left alone, accuracy per policy, atomic output, cache."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from levit_trt import quantize as quantize_module
from levit_trt.backends.base import ModelSource
from levit_trt.calibration import CalibrationSet, synthetic_calibration_set
from levit_trt.export import INPUT_NAME, OUTPUT_NAME
from levit_trt.precision_policy import POLICIES, PolicyError, PrecisionPolicy, quantizable_nodes, resolve_policy
from levit_trt.quantize import (
    QuantizationError,
    QuantizationReport,
    cached_qdq_onnx,
    int8_nodes,
    qdq_manifest,
    quantize_onnx,
    read_quantization_metadata,
)
from levit_trt.thresholds import agreement as measure_agreement
from levit_trt.weights import synthetic_images

ort = pytest.importorskip("onnxruntime")

CALIBRATION_IMAGES = 32
EVAL_IMAGES = 64


@pytest.fixture(scope="module")
def source(model_source: Callable[[str], ModelSource]) -> ModelSource:
    return model_source("128S")


@pytest.fixture(scope="module")
def fp32_onnx(source: ModelSource) -> Path:
    return source.onnx_path()


@pytest.fixture(scope="module")
def calibration() -> CalibrationSet:
    # Not seed 1: the stand-in weights random:0 estimated their batch-norm statistics on
    # synthetic_images(32, seed=1) (levit_trt/weights.py), and calibrating on those very images
    # measured 0.98 mean logit cosine on the agreement images against 0.95-0.96 on other sets.
    return synthetic_calibration_set("128S", CALIBRATION_IMAGES, seed=0)


@pytest.fixture(scope="module")
def quantized(fp32_onnx: Path, calibration: CalibrationSet,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, QuantizationReport]]:
    """Each shipped policy's Q/DQ ONNX, quantized once for the module."""
    out = tmp_path_factory.mktemp("qdq")
    return {name: (out / f"{name}.onnx", quantize_onnx(fp32_onnx, out / f"{name}.onnx", calibration, policy))
            for name, policy in POLICIES.items()}


def _dq_fed(model: onnx.ModelProto) -> set[str]:
    return set(int8_nodes(model))


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + 16]})[0]
                           for i in range(0, len(images), 16)])


@pytest.mark.parametrize("name", list(POLICIES))
def test_no_qdq_feeds_a_float_node_and_every_other_candidate_is_int8(
        name: str, quantized: dict, fp32_onnx: Path) -> None:
    path, report = quantized[name]
    fp32 = onnx.load(str(fp32_onnx))
    kept = POLICIES[name].float_nodes(fp32)
    model = onnx.load(str(path))
    fed = _dq_fed(model)
    assert not fed & kept
    assert set(quantizable_nodes(fp32)) - kept <= fed
    assert set(report.quantized_nodes) == fed and {n for n, _ in report.float_nodes} == kept
    assert report.policy["name"] == name and report.calibration_images == CALIBRATION_IMAGES


def test_all_int8_quantizes_what_default_keeps_float(quantized: dict, fp32_onnx: Path) -> None:
    default_float = POLICIES["default"].float_nodes(onnx.load(str(fp32_onnx)))
    assert default_float and default_float <= _dq_fed(onnx.load(str(quantized["all-int8"][0])))
    assert quantized["all-int8"][1].num_float == 0
    assert quantized["default"][1].num_quantized + quantized["default"][1].num_float == \
        quantized["all-int8"][1].num_quantized


def test_qdq_is_in_the_form_tensorrt_consumes(quantized: dict) -> None:
    """Symmetric INT8, per-channel weights on the output-channel axis, per-tensor activations, float biases."""
    model = onnx.load(str(quantized["all-int8"][0]))
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    consumers = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    axes: dict[str, set[int]] = collections.defaultdict(set)
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale, zero_point = initializers[node.input[1]], initializers[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
        data = initializers.get(node.input[0])
        (consumer, *_) = consumers[node.output[0]]
        if data is not None and consumer.op_type in ("Conv", "MatMul", "Gemm"):  # a weight
            axis = next(a.i for a in node.attribute if a.name == "axis")
            assert data.dtype == np.int8 and scale.shape == (data.shape[axis],)
            axes[consumer.op_type].add(axis)
        else:  # an activation, or the constant attention bias of an INT8 Add
            assert scale.shape == (), node.name
    assert axes == {"Conv": {0}, "MatMul": {1}, "Gemm": {0}}  # Gemm has transB=1: weights are [out, in]
    biases = [node.input[2] for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    assert all(initializers[b].dtype == np.float32 for b in biases)
    assert model.graph.input[0].name == INPUT_NAME and model.graph.output[0].name == OUTPUT_NAME


def test_each_projection_matmul_weight_is_scaled_along_its_output_channels(quantized: dict, fp32_onnx: Path) -> None:
    """LeViT's projections are MatMul(x [B, N, K], W [K, N]): each W's DequantizeLinear has axis 1 and N scales, the
    axis TensorRT folds into the GEMM's output scale (quantize.py cites the docs). The ONNX Runtime agreement of
    these files with PyTorch fp32 is `test_agreement_floor_per_policy`."""
    fp32 = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_onnx)))
    ranks = {info.name: len(info.type.tensor_type.shape.dim) for info in fp32.graph.value_info}
    fp32_weights = {init.name: init.dims for init in fp32.graph.initializer}
    projections = {node.name: (ranks[node.input[0]], list(fp32_weights[node.input[1]])) for node in fp32.graph.node
                   if node.op_type == "MatMul" and node.input[1] in fp32_weights}
    assert projections and {rank for rank, _ in projections.values()} == {3}
    model = onnx.load(str(quantized["default"][0]))
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.name not in projections:
            continue
        dq = producers[node.input[1]]
        _, (k, n) = projections[node.name]
        assert dq.op_type == "DequantizeLinear" and initializers[dq.input[0]].shape == (k, n), node.name
        assert [a.i for a in dq.attribute if a.name == "axis"] == [1], node.name
        assert initializers[dq.input[1]].shape == (n,), node.name


def test_dynamic_batch_is_kept(quantized: dict) -> None:
    path = quantized["default"][0]
    images = synthetic_images(5, seed=9).numpy()
    batched = _run(path, images)
    assert batched.shape == (5, 1000)
    one_by_one = np.concatenate([_run(path, images[i:i + 1]) for i in range(5)])
    # the same integer kernels per image; only the float epilogues' summation order may differ
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def agreement(quantized: dict, source: ModelSource) -> dict[str, tuple[float, float]]:
    """Top-1 agreement and mean logit cosine of each policy's Q/DQ model with PyTorch fp32."""
    images = synthetic_images(EVAL_IMAGES, seed=1000)  # not the calibration images (seed 1)
    with torch.no_grad():
        reference = source.torch_model()(images)
    measured = {name: measure_agreement(torch.from_numpy(_run(path, images.numpy())), reference)
                for name, (path, _) in quantized.items()}
    return {name: (result.top1, result.cosine) for name, result in measured.items()}


def test_policies_compared_by_top1_and_cosine(agreement: dict) -> None:
    """The order measured on the stand-in weights (recipe 3; numbers below): by cosine default >
    activations > all-int8, by top-1 activations > default > all-int8, every gap under 0.006 of
    cosine and 0.04 of top-1 (2 images of 64). Keeping Hardswish out of INT8 did not recover the
    reference's 10 points here (what does is in levit_trt/thresholds.py, beside the int8 floor), so
    no order is asserted beyond what that margin supports: the default policy within 0.01 cosine
    and 0.1 top-1 of the best policy. A doubled weight scale in the default's Q/DQ model (the
    eleventh weighted MatMul) measured 0.156 / 0.665 and fails this."""
    print("agreement with PyTorch fp32 (top-1, mean cosine):", agreement)
    assert agreement["default"][1] >= max(cosine for _, cosine in agreement.values()) - 0.01
    assert agreement["default"][0] >= max(top1 for top1, _ in agreement.values()) - 0.1


# Measured here (levit_128s random:0, stand-in recipe 3, 32 calibration images of seed 0 and 64
# others of seed 1000, ONNX Runtime on a 2-core x86 CPU), top-1 agreement / mean logit cosine with
# PyTorch fp32: all-int8 0.609 / 0.9598, activations 0.641 / 0.9648, default 0.625 / 0.9657.
# (Calibrated on seed 1, the very images random:0's batch norms were estimated on: 0.812 / 0.9785,
# 0.750 / 0.9809, 0.812 / 0.9818, an optimistic coincidence.) The floors sit about 0.1 (top-1) and
# 0.01 (cosine) under the measurements; logits of other images score near-zero agreement and
# cosine about 0.01 (tests/test_agreement_floors.py).
FLOORS = {
    "all-int8": (0.50, 0.95),
    "activations": (0.53, 0.95),
    "default": (0.52, 0.95),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_agreement_floor_per_policy(name: str, agreement: dict) -> None:
    top1, cosine = agreement[name]
    floor_top1, floor_cosine = FLOORS[name]
    assert top1 >= floor_top1 and cosine >= floor_cosine, f"{name}: top-1 {top1:.3f}, cosine {cosine:.4f}"


@pytest.fixture(scope="module")
def tiny_calibration() -> CalibrationSet:
    """Enough for tests of structure and errors, not of accuracy."""
    return synthetic_calibration_set("128S", 4, seed=2)


def test_float_node_sharing_its_input_with_an_int8_node_gets_the_float_tensor(
        fp32_onnx: Path, tiny_calibration: CalibrationSet, tmp_path: Path) -> None:
    """A residual Add reads the tensor the next MatMul quantizes; kept float, it must not read the DQ output."""
    fp32 = onnx.load(str(fp32_onnx))
    readers = collections.defaultdict(list)
    for node in fp32.graph.node:
        for name in node.input:
            readers[name].append(node)
    add, shared = next((node, name) for node in fp32.graph.node if node.op_type == "Add" for name in node.input
                       if {"Add", "MatMul"} <= {reader.op_type for reader in readers[name]})
    matmul = next(reader for reader in readers[shared] if reader.op_type == "MatMul")
    policy = resolve_policy("default", extra_nodes=[add.name])
    report = quantize_onnx(fp32_onnx, tmp_path / "q.onnx", tiny_calibration, policy)
    model = onnx.load(str(tmp_path / "q.onnx"))
    nodes = {node.name: node for node in model.graph.node}
    assert shared in nodes[add.name].input  # the float tensor itself
    assert matmul.name in _dq_fed(model) and add.name not in _dq_fed(model)
    assert (add.name, "Add") in report.float_nodes
    assert "1 Add" not in report.summary() and f"{report.num_float} kept float" in report.summary()


def test_interrupted_quantization_leaves_no_file(fp32_onnx: Path, tiny_calibration: CalibrationSet, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"an earlier file")

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize_module, "_detach_float_nodes", interrupted)  # after ORT wrote its file
    with pytest.raises(KeyboardInterrupt):
        quantize_onnx(fp32_onnx, out, tiny_calibration, POLICIES["default"])
    assert [p.name for p in tmp_path.iterdir()] == ["int8.onnx"] and out.read_bytes() == b"an earlier file"
    with pytest.raises(KeyboardInterrupt):
        quantize_onnx(fp32_onnx, tmp_path / "new.onnx", tiny_calibration, POLICIES["default"])
    assert not (tmp_path / "new.onnx").exists()


def test_bad_inputs_are_clear_errors(fp32_onnx: Path, quantized: dict, tiny_calibration: CalibrationSet,
                                     tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    with pytest.raises(FileNotFoundError, match=r"does not exist \(write one with levit-trt export\)"):
        quantize_onnx(tmp_path / "missing.onnx", out, tiny_calibration, POLICIES["default"])
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.onnx is not a readable ONNX model"):
        quantize_onnx(tmp_path / "junk.onnx", out, tiny_calibration, POLICIES["default"])
    with pytest.raises(QuantizationError, match="already holds Q/DQ nodes"):
        quantize_onnx(quantized["default"][0], out, tiny_calibration, POLICIES["default"])
    small = CalibrationSet(np.zeros((2, 3, 112, 112), np.float32), "sha256:x", "levit_128s", "small")
    with pytest.raises(QuantizationError, match=r"calibration images are \[N, 3, 112, 112\] but .* takes \[N, 3, 224, 224\]"):
        quantize_onnx(fp32_onnx, out, small, POLICIES["default"])
    everything = PrecisionPolicy("everything", "all float", float_op_types=tuple(POLICIES["default"].float_op_types)
                                 + ("Conv", "Gemm", "MatMul", "Add", "Mul"))
    candidates = len(quantizable_nodes(onnx.load(str(fp32_onnx))))
    with pytest.raises(QuantizationError, match=f"keeps all {candidates} quantizable nodes .* float: there is nothing"):
        quantize_onnx(fp32_onnx, out, tiny_calibration, everything)
    with pytest.raises(PolicyError, match="float node 'no_such_node' is not in the graph"):
        quantize_onnx(fp32_onnx, out, tiny_calibration, resolve_policy("default", extra_nodes=["no_such_node"]))
    assert not out.exists()


def test_metadata_names_policy_and_calibration(quantized: dict, calibration: CalibrationSet, fp32_onnx: Path) -> None:
    stamp = read_quantization_metadata(quantized["default"][0])
    assert stamp is not None and stamp["policy"] == POLICIES["default"].manifest()
    assert stamp["calibration"] == calibration.identity
    assert read_quantization_metadata(fp32_onnx) is None


def test_cache_reuses_and_rekeys(fp32_onnx: Path, tiny_calibration: CalibrationSet, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    first = cached_qdq_onnx(fp32_onnx, tiny_calibration, POLICIES["default"], tmp_path)
    stamp = read_quantization_metadata(first)
    assert first.is_file() and stamp is not None and stamp["calibration"] == tiny_calibration.identity

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("quantized again although the cache holds this model")

    monkeypatch.setattr(quantize_module, "quantize_onnx", must_not_run)
    assert cached_qdq_onnx(fp32_onnx, tiny_calibration, POLICIES["default"], tmp_path) == first
    manifest = qdq_manifest(fp32_onnx, tiny_calibration, POLICIES["default"])
    for changed in (qdq_manifest(fp32_onnx, synthetic_calibration_set("128S", 4, seed=3), POLICIES["default"]),
                    qdq_manifest(fp32_onnx, tiny_calibration, POLICIES["all-int8"]),
                    qdq_manifest(fp32_onnx, tiny_calibration, resolve_policy("default", ["Gemm"]))):
        assert changed != manifest


def test_cache_key_covers_external_weights(tiny_calibration: CalibrationSet, tmp_path: Path) -> None:
    """A model whose weights live beside it: other weights, same graph file, are another Q/DQ model."""
    weight = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", [INPUT_NAME, "w"], [OUTPUT_NAME], name="mm")], "tiny",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["n", 3])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["n", 3])], [weight])
    path = tmp_path / "tiny.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path), save_as_external_data=True, location="tiny.weights",
              size_threshold=0)
    before = qdq_manifest(path, tiny_calibration, POLICIES["default"])
    weights = tmp_path / "tiny.weights"
    weights.write_bytes(weights.read_bytes()[::-1])
    assert qdq_manifest(path, tiny_calibration, POLICIES["default"])["fp32_onnx_sha256"] != before["fp32_onnx_sha256"]
