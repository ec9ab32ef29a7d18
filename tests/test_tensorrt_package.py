"""The levit_trt.tensorrt package on a CPU, without running an engine: its one TensorRT import, and the runtime
fixes that can be shown here (inspector with a context, tensor-address checks, NoOp tactics, plugin use in
ONNX functions, which plugin libraries an ONNX and a plugin backend need, the wheel's CUDA major). Fakes stand in for TensorRT objects where the behaviour is ours."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from levit_trt.plugins import (
    ATTENTION_TRT_PLUGIN_LIBRARY_NAME,
    TRT_PLUGIN_LIBRARY_NAME,
    attention_plugin_identity,
    softmax_plugin_identity,
)
from levit_trt.tensorrt import binding, deserialize, runner
from levit_trt.tensorrt.layer_report import layer_tactic, layers_from_build_log, summarize_layer_precisions
from levit_trt.tensorrt.plugin_libraries import plugin_libraries_for

PACKAGE = Path(__file__).resolve().parents[1] / "levit_trt"


def runtime_imports(path: Path) -> set[str]:
    """Top-level module names a file imports outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_only_binding_imports_the_tensorrt_module() -> None:
    importers = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if runtime_imports(path) & {"tensorrt", "tensorrt_rtx"}}
    assert importers == set(), importers  # binding imports by name (importlib), so no import statement at all
    assert "importlib" in runtime_imports(PACKAGE / "tensorrt" / "binding.py")


class FakeContext:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.addresses: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def set_tensor_address(self, name: str, address: int) -> bool:
        if self.accept:
            self.addresses[name] = address
        return self.accept

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True


def test_bind_tensor_checks_alignment_and_tensorrts_answer() -> None:
    context = FakeContext()
    runner.bind_tensor(context, "input", 0x1000, "engine")  # type: ignore[arg-type]
    assert context.addresses == {"input": 0x1000}
    with pytest.raises(RuntimeError, match="not 256-byte aligned"):
        runner.bind_tensor(context, "input", 0x1004, "engine")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="refused the address"):
        runner.bind_tensor(FakeContext(accept=False), "output", 0x2000, "engine")  # type: ignore[arg-type]


def test_aligned_copies_only_a_misaligned_view() -> None:
    storage = torch.arange(1024, dtype=torch.float32)
    skip = (-storage.data_ptr() % runner.TENSOR_ADDRESS_ALIGNMENT) // storage.element_size()
    on_boundary = storage[skip:skip + 256]  # both cases every run, wherever the allocator put the storage
    off_boundary = storage[skip + 1:skip + 257]  # 4 bytes past a 256-byte boundary
    assert on_boundary.data_ptr() % runner.TENSOR_ADDRESS_ALIGNMENT == 0
    assert runner.aligned(on_boundary).data_ptr() == on_boundary.data_ptr()
    copied = runner.aligned(off_boundary)
    assert copied.data_ptr() != off_boundary.data_ptr() and torch.equal(copied, off_boundary)


def test_engine_information_asks_the_inspector_through_a_context_at_the_opt_shape(
        monkeypatch: pytest.MonkeyPatch) -> None:
    context = FakeContext()
    inspector = SimpleNamespace(execution_context=None,
                                get_engine_information=lambda form: f"info with {inspector.execution_context}")
    fake_trt = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"),
                               LayerInformationFormat=SimpleNamespace(JSON="json"))
    engine = SimpleNamespace(
        num_io_tensors=2, get_tensor_name=["input", "logits"].__getitem__,
        get_tensor_mode=lambda name: "in" if name == "input" else "out",
        get_tensor_shape=lambda name: [-1, 3, 224, 224] if name == "input" else [-1, 1000],
        get_tensor_profile_shape=lambda name, profile: ([1, 3, 224, 224], [8, 3, 224, 224], [16, 3, 224, 224]),
        create_engine_inspector=lambda: inspector, create_execution_context=lambda: context)
    monkeypatch.setattr(deserialize, "tensorrt_module", lambda flavor: fake_trt)
    assert deserialize.engine_information("tensorrt", engine) == f"info with {context}"  # type: ignore[arg-type]
    assert context.shapes == {"input": (8, 3, 224, 224)}


def test_noop_layers_have_a_tactic_value_only() -> None:
    assert layer_tactic({"LayerType": "NoOp", "TacticValue": "0x0000000000000000"}) == "0x0000000000000000"
    assert layer_tactic({"TacticName": "sm80_gemm", "TacticValue": "0x1"}) == "sm80_gemm"
    assert layer_tactic({"LayerType": "Reformat"}) is None


def test_build_log_layers_read_like_the_inspector() -> None:
    log = ("Layers:\n"
           "Name: sync_0, LayerType: signal, Inputs: [], Constants: [], Outputs: [], TacticName: , StreamId: 0, "
           "Metadata: \n"
           "Name: gemm_1, LayerType: gemm, Inputs: [ { Name: a, Dimensions: [-1,196,128], Datatype: Int8, Format: "
           "(Linear) Row major }], Constants: [ { Name: w, Dimensions: [128,256], Datatype: Float, Format: x }], "
           "Outputs: [ { Name: b, Dimensions: [-1,196,256], Datatype: Half, Format: (Linear) Row major }], "
           "TacticName: gemm_tactic, StreamId: 0, Metadata: [ONNX Layer: node_MatMul_7]\x1f[ONNX Layer: dq_1]\n"
           "\nI/O Tensors:\n Name: input, IOMode: Input, DataType: Half\n")
    report = layers_from_build_log(log)
    assert [layer["Name"] for layer in report["Layers"]] == ["sync_0", "gemm_1"]
    assert report["Layers"][1]["TacticName"] == "gemm_tactic"
    assert summarize_layer_precisions(report) == {"int8": 1, "unknown": 1}  # constants (weights) do not count
    with pytest.raises(ValueError, match="DETAILED"):
        layers_from_build_log("Engine generation completed")


def test_plugin_use_inside_an_onnx_function_needs_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEVIT_TRT_PLUGIN_DIR", str(tmp_path))
    (tmp_path / TRT_PLUGIN_LIBRARY_NAME).write_bytes(b"stand-in library")
    identity = softmax_plugin_identity()
    plugin = helper.make_node(identity.name, ["x"], ["y"], domain="levit_trt")
    function = helper.make_function("local", "block", ["x"], ["y"], [plugin],
                                    [helper.make_opsetid("", 18), helper.make_opsetid("levit_trt", 1)])
    graph = helper.make_graph([helper.make_node("block", ["input"], ["output"], domain="local")], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, functions=[function], opset_imports=[helper.make_opsetid("", 18),
                                                                             helper.make_opsetid("local", 1)])
    assert plugin_libraries_for(model, ()) == ((tmp_path / TRT_PLUGIN_LIBRARY_NAME).resolve(),)
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g",
                                                list(graph.input), list(graph.output)))
    assert plugin_libraries_for(plain, ()) == ()


def test_wheel_cuda_major_reads_the_distribution_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def distributions(*names: str) -> Any:
        return lambda: [SimpleNamespace(metadata={"Name": name}) for name in names]

    binding.wheel_cuda_major.cache_clear()
    try:
        monkeypatch.setattr(binding.metadata, "distributions", distributions("numpy", "tensorrt-cu12-libs"))
        assert binding.wheel_cuda_major("tensorrt") == "12"
        binding.wheel_cuda_major.cache_clear()
        monkeypatch.setattr(binding.metadata, "distributions", distributions("tensorrt_rtx_cu13", "tensorrt-cu12"))
        assert binding.wheel_cuda_major("rtx") == "13"
        binding.wheel_cuda_major.cache_clear()
        monkeypatch.setattr(binding.metadata, "distributions", distributions("tensorrt_rtx_cu13"))
        assert binding.wheel_cuda_major("tensorrt") is None  # an RTX wheel is not TensorRT's
    finally:
        binding.wheel_cuda_major.cache_clear()


def plugin_node_model(*op_types: str) -> onnx.ModelProto:
    """A chain of levit_trt-domain nodes of these op types (what the parser hands to the plugin registry)."""
    names = ["input", *(f"t{index}" for index in range(len(op_types) - 1)), "output"]
    nodes = [helper.make_node(op, [names[index]], [names[index + 1]], domain="levit_trt")
             for index, op in enumerate(op_types)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("levit_trt", 1)])


@pytest.fixture
def stand_in_libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Stand-ins for both built plugin libraries where levit_trt looks for them."""
    monkeypatch.setenv("LEVIT_TRT_PLUGIN_DIR", str(tmp_path))
    libraries = {"softmax": tmp_path / TRT_PLUGIN_LIBRARY_NAME, "attention": tmp_path / ATTENTION_TRT_PLUGIN_LIBRARY_NAME}
    for path in libraries.values():
        path.write_bytes(b"stand-in library")
    return {name: path.resolve() for name, path in libraries.items()}


def test_an_onnx_loads_exactly_the_libraries_its_plugin_nodes_need(stand_in_libraries: dict[str, Path]) -> None:
    softmax, attention = "LevitSoftmax", "LevitAttention"  # the contract's op types, not read from the headers
    assert (softmax_plugin_identity().name, attention_plugin_identity().name) == (softmax, attention)
    assert plugin_libraries_for(plugin_node_model(attention), ()) == (stand_in_libraries["attention"],)
    assert plugin_libraries_for(plugin_node_model(softmax), ()) == (stand_in_libraries["softmax"],)
    both = plugin_libraries_for(plugin_node_model(softmax, attention), ())
    assert sorted(both) == sorted(stand_in_libraries.values())
    # one given by path (from anywhere) replaces the built one of its name; the other is still found
    assert plugin_libraries_for(plugin_node_model(softmax, attention), (stand_in_libraries["attention"],)) == (
        stand_in_libraries["attention"], stand_in_libraries["softmax"])


def test_plugin_backends_need_the_library_of_their_plugin(stand_in_libraries: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without liblevit_attention_trt.so the plugin backends are unavailable by default (attention), with the
    build command as the reason, and available with plugin='softmax'; a plugin they do not have is an error."""
    from levit_trt.backends import tensorrt as tensorrt_backends
    from levit_trt.backends.base import UnsupportedCombination

    monkeypatch.setattr(tensorrt_backends, "tensorrt_version", lambda flavor: "11.1.0")  # as if installed
    stand_in_libraries["attention"].unlink()
    for backend in (tensorrt_backends.TensorRTPluginBackend, tensorrt_backends.TensorRTRtxPluginBackend):
        for status in (backend.availability("cpu"), backend.availability_for("cpu", plugin="attention")):
            assert not status.available
            assert ATTENTION_TRT_PLUGIN_LIBRARY_NAME in status.reason and "cmake -S . -B build" in status.reason
        assert backend.availability_for("cpu", plugin="softmax").available
        with pytest.raises(UnsupportedCombination, match=f"backend '{backend.name}' has no plugin 'flash'"):
            backend.availability_for("cpu", plugin="flash")
    assert tensorrt_backends.TensorRTBackend.availability_for("cpu", plugin="attention").available  # no plugin used


def test_the_rtx_build_child_does_not_import_torch() -> None:
    # build_process runs each TensorRT-RTX build in a child that imports levit_trt.tensorrt.builder;
    # torch there cost ~1.5 s per build (it came in through levit_trt.export for one constant).
    code = "import sys, levit_trt.tensorrt.builder; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
