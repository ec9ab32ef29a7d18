"""PyTorch -> ONNX: export of the prepared model, checks of the graph, and the on-disk ONNX cache."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from levit_trt.cache import cached_build, cached_entry
from levit_trt.variants import Variant
from levit_trt.weights import WeightsSpec, file_sha256

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 1000
ONNX_FILENAME = "model.onnx"
# Bump when export code changes in a way that changes the produced graph.
EXPORT_RECIPE_VERSION = 1

Exporter = Literal["dynamo", "torchscript"]
OnnxPrecision = Literal["fp32", "fp16"]


class OnnxCheckError(RuntimeError):
    """An exported graph that breaks one of the project's promises about it."""


@dataclass(frozen=True)
class ExportOptions:
    """Everything that changes the exported graph besides the variant and weights.

    `dynamo` (torch.export) is PyTorch's supported exporter and gives a smaller graph for LeViT;
    `torchscript` is the legacy tracer, kept because older TensorRT parsers know its patterns.
    `precision="fp16"` exports fp16 weights and I/O, the form TensorRT 11's strongly typed
    networks need for FP16 engines. `softmax_plugin` / `attention_plugin` rewrite the exported graph
    for the TensorRT softmax plugin or the fused attention plugin (one of the two).
    """

    opset: int = 18
    exporter: Exporter = "dynamo"
    precision: OnnxPrecision = "fp32"
    softmax_plugin: bool = False
    attention_plugin: bool = False

    def __post_init__(self) -> None:
        if self.exporter not in ("dynamo", "torchscript"):
            raise ValueError(f"unknown exporter {self.exporter!r}; choose 'dynamo' or 'torchscript'")
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"ONNX export precision must be fp32 or fp16, not {self.precision!r}")
        if self.softmax_plugin and self.attention_plugin:
            raise ValueError("choose the softmax plugin or the attention plugin, not both: the attention plugin "
                             "replaces the softmax with the rest of the attention")

    @property
    def uses_plugin(self) -> bool:
        return self.softmax_plugin or self.attention_plugin


def export_onnx(model: nn.Module, path: Path, options: ExportOptions, input_size: int = 224) -> None:
    """Export `model` (a prepared LeViT in the explicit attention form) to `path` with a dynamic batch dimension.

    The explicit form is the one the ONNX rewrites recognise and every ONNX consumer can run; SDPA
    or the fused op would export as other (or no) ONNX ops.
    """
    from levit_trt.models import attention_forms, prepared_attention_layers

    forms = attention_forms(model)
    if forms != {"explicit"}:
        raise ValueError(f"export_onnx exports the explicit attention form, but the model uses {sorted(forms)}; "
                         "prepare it with attention='explicit' (ExportOptions.attention_plugin gives the fused plugin)")
    dtype = torch.float16 if options.precision == "fp16" else torch.float32
    model = model.to(dtype).eval()
    example = torch.randn(2, 3, input_size, input_size, dtype=dtype)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer chatter, not about our graph
        if options.exporter == "dynamo":
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, opset_version=options.opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), verbose=False,
            )
        else:
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=options.opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    if options.uses_plugin:
        _rewrite_for_plugin(path, options, expected_attention=len(prepared_attention_layers(model)))
    check_onnx(path, expect_plugin=options.uses_plugin)


def _rewrite_for_plugin(path: Path, options: ExportOptions, expected_attention: int) -> None:
    """Rewrite the exported file at `path` for the plugin `options` names; the count must be what the model has."""
    import onnx

    from levit_trt.onnx_rewrites import replace_attention_with_plugin, replace_softmax_with_plugin

    graph = onnx.load(str(path))
    if options.attention_plugin:
        graph, replaced = replace_attention_with_plugin(graph)
        if replaced != expected_attention:
            raise OnnxCheckError(f"{path}: replaced {replaced} attention subgraphs with the plugin, but the model "
                                 f"has {expected_attention} attention layers")
    elif replace_softmax_with_plugin(graph) == 0:
        raise OnnxCheckError(f"{path}: no Softmax node to replace with the plugin")
    onnx.save(graph, str(path))


def check_onnx(path: Path, expect_plugin: bool = False) -> None:
    """Check the graph with onnx.checker and against our I/O contract; no BatchNormalization."""
    import onnx

    model = onnx.load(str(path))
    if not expect_plugin:  # the checker rejects the plugin's custom-domain nodes
        onnx.checker.check_model(model, full_check=False)
    batch_norms = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    if batch_norms:
        raise OnnxCheckError(f"{path}: {len(batch_norms)} BatchNormalization nodes left, e.g. {batch_norms[0]}")
    for value, name, tail in (
        (model.graph.input[0], INPUT_NAME, None),
        (model.graph.output[0], OUTPUT_NAME, [NUM_CLASSES]),
    ):
        dims = value.type.tensor_type.shape.dim
        if value.name != name:
            raise OnnxCheckError(f"{path}: expected {name!r}, found {value.name!r}")
        if not dims or dims[0].HasField("dim_value"):
            raise OnnxCheckError(f"{path}: {name} has no dynamic batch dimension")
        if tail is not None and [d.dim_value for d in dims[1:]] != tail:
            raise OnnxCheckError(f"{path}: {name} has shape [N, {dims[1:]}], expected [N, {tail}]")


def load_onnx(path: Path) -> onnx.ModelProto:
    """The ONNX graph at `path` (weights left on disk); ValueError naming the file when it is missing or unreadable."""
    import onnx

    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist (write one with levit-trt export)")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises its own DecodeError; onnx raises several kinds
        raise ValueError(f"{path} is not a readable ONNX model ({type(error).__name__}: {error})") from error


def onnx_content_sha256(path: Path, model: onnx.ModelProto | None = None) -> str:
    """sha256 of an ONNX file and of the external-data files its initializers point to, if any.

    `model` is the graph of `path` where the caller has read it already.
    """
    if model is None:
        model = load_onnx(path)
    locations = sorted({entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                        if entry.key == "location"})
    if not locations:
        return file_sha256(path)
    digest = hashlib.sha256(file_sha256(path).encode())
    for location in locations:
        external = Path(path).parent / location
        if not external.is_file():
            raise FileNotFoundError(f"{path} keeps weights in {location}, which is not beside it")
        digest.update(f"{location}:{file_sha256(external)}".encode())
    return digest.hexdigest()


def onnx_manifest(variant: Variant, weights: WeightsSpec, options: ExportOptions) -> dict[str, object]:
    """Every input of an export: the cache key of the ONNX file."""
    import onnx

    from levit_trt.onnx_rewrites import REWRITE_VERSION
    from levit_trt.plugins import attention_plugin_identity, softmax_plugin_identity

    # The rewrite writes the plugin's identity into its nodes, so a changed identity header is another file.
    identity = (attention_plugin_identity() if options.attention_plugin
                else softmax_plugin_identity() if options.softmax_plugin else None)
    return {
        "artifact": "onnx",
        "recipe": EXPORT_RECIPE_VERSION,
        "variant": variant.name,
        "weights": weights.cache_token(variant),
        "options": dataclasses.asdict(options),
        "rewrite": REWRITE_VERSION if options.uses_plugin else None,
        "plugin_identity": dataclasses.asdict(identity) if identity is not None else None,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }


def cached_onnx(
    variant: Variant, weights: WeightsSpec, options: ExportOptions, cache_dir: Path
) -> Path:
    """The ONNX file for (variant, weights, options), exported once and reused from the cache."""
    from levit_trt.models import load_model

    def build(directory: Path) -> None:
        export_onnx(load_model(variant, weights), directory / ONNX_FILENAME, options, variant.input_size)

    entry = cached_build(cache_dir, "onnx", onnx_manifest(variant, weights, options), build)
    return entry / ONNX_FILENAME


def find_cached_onnx(variant: Variant, weights: WeightsSpec, options: ExportOptions, cache_dir: Path) -> Path | None:
    """The cached ONNX file `cached_onnx` would return, if it is already in the cache (nothing is exported)."""
    entry = cached_entry(cache_dir, "onnx", onnx_manifest(variant, weights, options))
    return None if entry is None else entry / ONNX_FILENAME
