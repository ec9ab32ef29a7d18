"""ONNX export: the I/O contract, no BatchNormalization, parity in ONNX Runtime, the cache."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from levit_trt.export import ExportOptions, OnnxCheckError, cached_onnx, check_onnx, export_onnx
from levit_trt.models import load_model
from levit_trt.variants import resolve_variant
from levit_trt.weights import parse_weights, synthetic_images

VARIANT = resolve_variant("128S")
WEIGHTS = parse_weights("random")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model(VARIANT, WEIGHTS)


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def exported(request, model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    export_onnx(copy.deepcopy(model), path, ExportOptions(exporter=request.param))
    return path


def test_graph_contract(exported: Path) -> None:
    graph = onnx.load(str(exported)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    in_dims = graph.input[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param and [d.dim_value for d in in_dims[1:]] == [3, 224, 224]
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)
    assert sum(n.op_type == "Softmax" for n in graph.node) == 11


@pytest.mark.parametrize("batch", [1, 16])
def test_onnxruntime_matches_pytorch(exported: Path, model, batch: int) -> None:
    import onnxruntime

    images = synthetic_images(batch, seed=100 + batch)
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"input": images.numpy()})
    # float32 with another summation order: measured max diff 6e-6 on logits of std ~0.2.
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_fp16_export_declares_fp16_io(model, tmp_path: Path) -> None:
    path = tmp_path / "fp16.onnx"
    export_onnx(copy.deepcopy(model), path, ExportOptions(precision="fp16"))
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_check_rejects_a_graph_without_dynamic_batch(exported: Path, tmp_path: Path) -> None:
    """The export with its batch dimension pinned to 1: no exporter call of its own (a raw legacy export here
    only added torch's deprecation warning), and each exporter's graph is checked."""
    graph = onnx.load(str(exported))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # replaces the symbolic "batch"
    path = tmp_path / "static.onnx"
    onnx.save(graph, str(path))
    check_onnx(exported)  # the unpinned graph passes
    with pytest.raises(OnnxCheckError, match="input has no dynamic batch dimension"):
        check_onnx(path)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown exporter 'fx'"):
        ExportOptions(exporter="fx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fp32 or fp16"):
        ExportOptions(precision="int8")  # type: ignore[arg-type]


def test_cached_export_is_reused_and_keyed_by_options(tmp_path: Path, monkeypatch) -> None:
    import levit_trt.export as export_module

    calls: list[ExportOptions] = []
    real_export = export_module.export_onnx

    def counting_export(model, path, options, input_size=224):  # type: ignore[no-untyped-def]
        calls.append(options)
        real_export(model, path, options, input_size)

    monkeypatch.setattr(export_module, "export_onnx", counting_export)
    torchscript = ExportOptions(exporter="torchscript")
    first = cached_onnx(VARIANT, WEIGHTS, torchscript, tmp_path)
    again = cached_onnx(VARIANT, WEIGHTS, torchscript, tmp_path)
    other_seed = cached_onnx(VARIANT, parse_weights("random:1"), torchscript, tmp_path)
    assert first == again and other_seed != first and len(calls) == 2
    assert (first.parent / "manifest.json").is_file()


def test_failed_export_leaves_no_cache_entry(tmp_path: Path, monkeypatch) -> None:
    import levit_trt.export as export_module

    def half_written_then_killed(model, path, options, input_size=224):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "export_onnx", half_written_then_killed)
    with pytest.raises(KeyboardInterrupt):
        cached_onnx(VARIANT, WEIGHTS, ExportOptions(exporter="torchscript"), tmp_path)
    assert not list((tmp_path / "onnx").glob("*/model.onnx"))
    assert not [p for p in (tmp_path / "onnx").iterdir() if p.is_dir()]
