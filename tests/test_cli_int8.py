"""`levit-trt calibrate` and `levit-trt quantize` end to end, and their errors for bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from levit_trt.backends.base import ModelSource
from levit_trt.cli import build_parser, main
from levit_trt.data import write_synthetic_imagenet
from levit_trt.quantize import int8_nodes, read_quantization_metadata

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def fp32_onnx(model_source: Callable[[str], ModelSource]) -> Path:
    return model_source("128S").onnx_path()


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=2, images_per_class=2,
                                    split="train")


def test_calibrate_then_quantize(fp32_onnx: Path, image_root: Path, tmp_path: Path, capsys) -> None:
    calib = tmp_path / "calib"
    assert main(["calibrate", "--data-path", str(image_root), "--num-images", "4", "--out", str(calib),
                 "--variant", "LeViT-128S", "--seed", "1"]) == 0
    assert f"wrote {calib}: 4 images from {image_root.resolve()}/train (seed 1), sha256:" in capsys.readouterr().out
    out = tmp_path / "int8.onnx"
    fp32 = onnx.load(str(fp32_onnx))
    constants = {init.name for init in fp32.graph.initializer}
    residual = next(n.name for n in fp32.graph.node if n.op_type == "Add" and not constants & set(n.input))
    assert main(["quantize", "--onnx", str(fp32_onnx), "--calib", str(calib), "--out", str(out),
                 "--float-op-types", "Gemm", "--float-nodes", residual]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: policy default:" in printed and "2 Gemm" in printed and "calibrated on 4 images" in printed
    model = onnx.load(str(out))
    fed = set(int8_nodes(model))
    assert residual not in fed and not any(n.op_type in ("Gemm", "Softmax") and n.name in fed
                                                  for n in model.graph.node)
    assert read_quantization_metadata(out)["policy"]["float_node_names"] == [residual]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "int8.onnx"]


@pytest.mark.parametrize(("argv", "message"), [
    (["quantize", "--onnx", "{onnx}", "--calib", "{calib}", "--out", "o.onnx", "--policy", "turbo"],
     "unknown precision policy 'turbo'; valid policies: all-int8, activations, default"),
    (["quantize", "--onnx", "{onnx}", "--calib", "{calib}", "--out", "o.onnx", "--float-op-types", "Relu6"],
     "float op type 'Relu6' is not an ONNX op type"),
    (["quantize", "--onnx", "{onnx}", "--calib", "missing", "--out", "o.onnx"],
     "calibration directory missing does not exist"),
    (["quantize", "--onnx", "missing.onnx", "--calib", "{calib}", "--out", "o.onnx"],
     "ONNX file missing.onnx does not exist"),
    (["calibrate", "--data-path", "{root}", "--num-images", "5", "--out", "c"],
     "has only 4 images, fewer than the 5 asked for"),
    (["calibrate", "--data-path", "{root}", "--num-images", "1", "--out", "c", "--split", "val"],
     "no 'val/' folder"),
])
def test_bad_input_is_a_clear_error(argv: list[str], message: str, fp32_onnx: Path, image_root: Path,
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    calib = tmp_path / "calib"
    assert main(["calibrate", "--data-path", str(image_root), "--num-images", "1", "--out", str(calib)]) == 0
    monkeypatch.chdir(tmp_path)
    argv = [a.format(onnx=fp32_onnx, calib=calib, root=image_root) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


def test_build_and_quantize_spell_the_policy_options_alike(capsys) -> None:
    tail = ["--policy", "activations", "--float-op-types", "Gemm", "MatMul", "--float-nodes", "a", "--float-nodes", "b"]
    build = build_parser().parse_args(["build", "--onnx", "m.onnx", "--engine", "m.engine", *tail])
    quantize = build_parser().parse_args(["quantize", "--onnx", "m.onnx", "--calib", "c", "--out", "q.onnx", *tail])
    for args in (build, quantize):
        assert (args.policy, args.float_op_types, args.float_nodes) == ("activations", ["Gemm", "MatMul"], ["a", "b"])
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    listed = "".join(capsys.readouterr().out.split())  # help text wraps lines, at hyphens too
    assert all(f"{name}:" in listed for name in ("all-int8", "activations", "default"))
