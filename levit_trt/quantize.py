"""fp32 ONNX -> Q/DQ ONNX (explicit INT8) that TensorRT builds and ONNX Runtime runs.

The form TensorRT consumes: symmetric INT8 (zero points 0), per-channel weight scales (Conv axis 0,
MatMul [K, N] axis 1, Gemm along its output rows), per-tensor activation scales, Q/DQ only on the
inputs of the nodes that run in INT8 (TensorRT fuses a layer's output quantization from its
consumer's input Q/DQ), float biases, a dedicated Q/DQ pair per INT8 consumer, and no Q/DQ at all
in front of the nodes a `PrecisionPolicy` keeps float.

Quantizer: ONNX Runtime's `quantize_static` (QuantFormat.QDQ), chosen after trying both candidates:
- NVIDIA Model Optimizer 0.47 (`modelopt.onnx.quantization`) installs with `nvidia-modelopt[onnx]`
  only by replacing onnxruntime with onnxruntime-gpu 1.24, adding cupy-cuda12x and downgrading
  onnx 1.23 -> 1.21; with the tensorrt stubs our CI installs it fails at once (it probes TensorRT
  whenever `import tensorrt` succeeds: "module 'tensorrt' has no attribute 'Logger'"). With
  TensorRT hidden it ran, but picks its own Q/DQ placement (it kept Gemm, Softmax and the attention
  Mul/Add float and quantized HardSwish), which a user-chosen policy would have to undo. On
  levit_128s random weights its top-1 agreement with fp32 was 0.30 (logit cosine 0.90), against
  0.49 (0.93) for ours with the default policy, on the same 128 synthetic images.
- ONNX Runtime is already a dependency, runs on any CPU and takes the exact node list to quantize,
  so the policy alone decides what is INT8. Its defaults that do not suit TensorRT are switched off
  in `_ORT_OPTIONS`; what its node list cannot express (a tensor shared by an INT8 node and a float
  node gets one Q/DQ pair for both) is undone by `_detach_float_nodes`. The graph is not passed
  through ORT's optional pre-processing: its fusions rename nodes, and node names are the policy.

Calibration: Percentile (99.999th percentile of |x|, 2048-bin histograms), chosen by measurement on
levit_128s random weights, default policy, 64 synthetic calibration images (seeds 1 and 2) and 256
others evaluated. Mean logit cosine to fp32 / top-1 agreement: MinMax 0.906 / 0.34 and 0.953 / 0.56;
Percentile 99.999 0.937 / 0.48 and 0.958 / 0.60; Percentile 99.99 0.930 / 0.51 and 0.927 / 0.60, but
its worst image fell to cosine 0.17 (clipping). Entropy cannot be given a bin count through
`quantize_static` and with its default of 128 bins returns the maximum: the same model as MinMax.
ORT keeps every intermediate tensor of a collection pass in memory (about 25 MB per levit_128s
image), so activations are collected in chunks of at most `_CHUNK_IMAGES` images.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from levit_trt.cache import atomic_output, cached_build
from levit_trt.calibration import CalibrationSet
from levit_trt.export import INPUT_NAME, check_onnx, load_onnx, onnx_content_sha256
from levit_trt.precision_policy import QDQ_OP_TYPES, QUANTIZED_OP_TYPES, PrecisionPolicy, quantizable_nodes

QDQ_ONNX_FILENAME = "model.qdq.onnx"
METADATA_KEY = "levit_trt.quantization"
# Bump when the quantization code changes in a way that changes the produced graph.
QUANTIZER_VERSION = 1
CALIBRATE_METHOD = "Percentile"
CALIBRATE_PERCENTILE = 99.999
# levit_128s quantized with 128 calibration images peaked at 2.4 GB in chunks of 64, 3.9 GB in one pass.
_CHUNK_IMAGES = 64
_ORT_OPTIONS: dict[str, Any] = {
    "ActivationSymmetric": True,  # TensorRT needs zero points of 0
    "WeightSymmetric": True,
    "QuantizeBias": False,  # ORT's int32 bias DQ is no TensorRT Q/DQ form; TensorRT fuses float biases
    "DedicatedQDQPair": True,  # TensorRT cannot fuse one Q/DQ pair into two consumers
    "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),  # Q/DQ on inputs only
    "CalibPercentile": CALIBRATE_PERCENTILE,
    # Per-channel MatMul weights along N, pinned rather than left to ORT's default (1 in 1.32). LeViT's projections
    # are MatMul(x [B, N, K], W [K, N]). TensorRT Developer Guide, "Working with INT8" / "Working with Quantized
    # Types", section "Per-Tensor and Per-Channel Quantization": activations are quantized per tensor only; a
    # per-channel scale must run along the weight's output-channel axis (a scale along K cannot be taken out of
    # the sum over K into the GEMM's output scale); per-channel weights are supported for convolution,
    # deconvolution, fully connected and a MatMul whose second input is a constant, the guide naming only 2-D
    # inputs for that MatMul case. Its explicit-quantization section (ONNX support) adds that a Gemm from
    # torch.nn.Linear (transB=1, weight [N, K]) is quantized on axis 0, which ORT's Gemm rule already does.
    # Measured with TensorRT-RTX 1.7.1 on LeViT-128S (tests/test_tensorrt_rtx.py): the 3-D x 2-D form needs no
    # Reshape to 2-D; the builder flattens x to [B*N, K] itself and every projection runs as a "gemm" layer with
    # INT8 input and INT8 weights. With axis 0 none does: each becomes a "runtime_fusion" layer that casts to
    # float and multiplies in float.
    "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
}


class QuantizationError(RuntimeError):
    """A model or calibration set that cannot be quantized; the message says why and what to do."""


@dataclass(frozen=True)
class QuantizationReport:
    """What a quantization did: the policy, which nodes run in INT8 and which the policy kept float."""

    policy: dict[str, Any]  # PrecisionPolicy.manifest(): name and resolved contents
    calibration: str  # the calibration set's identity
    calibration_images: int
    calibrate_method: str
    quantized_nodes: tuple[str, ...]  # nodes fed by a Q/DQ pair in the output graph
    float_nodes: tuple[tuple[str, str], ...]  # (name, op type): quantizable nodes the policy kept float

    @property
    def num_quantized(self) -> int:
        return len(self.quantized_nodes)

    @property
    def num_float(self) -> int:
        return len(self.float_nodes)

    def summary(self) -> str:
        kept = collections.Counter(op_type for _, op_type in self.float_nodes)
        kinds = ", ".join(f"{count} {op_type}" for op_type, count in sorted(kept.items())) or "none"
        return (f"policy {self.policy['name']}: {self.num_quantized} nodes in INT8, {self.num_float} kept float "
                f"({kinds}); calibrated on {self.calibration_images} images ({self.calibrate_method})")


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over a CalibrationSet, in batches it can take in ranges.

    ORT calls `set_range` once per chunk of `chunk_batches()` batches and collects each chunk
    separately (its histogram calibrators merge the chunks' histograms).
    """

    def __init__(self, calibration: CalibrationSet, batch_size: int, progress: bool) -> None:
        from tqdm import tqdm

        self._images = calibration.images
        self._starts = list(range(0, calibration.num_images, batch_size))
        self._batch_size = batch_size
        self._pending: Iterator[int] = iter(self._starts)
        self._bar = tqdm(total=calibration.num_images, desc="calibrating", unit="img", disable=not progress)

    def __len__(self) -> int:
        return len(self._starts)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self._starts[start_index:end_index])

    def chunk_batches(self) -> int:
        """The largest number of batches per collection pass that divides the batch count (ORT needs that)."""
        limit = max(1, _CHUNK_IMAGES // self._batch_size)
        return max(d for d in range(1, limit + 1) if len(self) % d == 0)

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._pending, None)
        if start is None:
            return None
        batch = np.array(self._images[start:start + self._batch_size], dtype=np.float32)
        self._bar.update(len(batch))
        return {INPUT_NAME: batch}

    def close(self) -> None:
        self._bar.close()


def _load_fp32(path: Path, calibration: CalibrationSet) -> onnx.ModelProto:
    """The graph of `path` (`export.load_onnx`), checked to be an fp32 export that `calibration` fits."""
    model = load_onnx(path)
    if any(node.op_type in QDQ_OP_TYPES for node in model.graph.node):
        raise QuantizationError(f"{path} already holds Q/DQ nodes; quantize the fp32 ONNX from levit-trt export")
    names = collections.Counter(node.name for node in model.graph.node)
    bad = [name for name, count in names.items() if count > 1 or not name]
    if bad:
        raise QuantizationError(f"{path} has unnamed or repeated node names ({bad[0]!r}); node names select "
                                f"what stays float, so re-export it with levit-trt export")
    if not model.graph.input or model.graph.input[0].name != INPUT_NAME:
        raise QuantizationError(f"{path} has no input named {INPUT_NAME!r}; export it with levit-trt export")
    expected = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    got = list(calibration.images.shape[1:])
    if expected != got:
        raise QuantizationError(f"calibration images are [N, {', '.join(map(str, got))}] but {path} takes "
                                f"[N, {', '.join(map(str, expected))}]; write a calibration set for this "
                                f"model's variant (levit-trt calibrate --variant ...)")
    return model


def _detach_float_nodes(model: onnx.ModelProto, float_nodes: set[str]) -> None:
    """Feed each float node the unquantized tensor wherever ORT gave it a shared DQ output."""
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.name not in float_nodes:
            continue
        for index, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
    while True:  # drop the Q/DQ nodes nobody reads any more
        used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
        unused = [n for n in model.graph.node if n.op_type in QDQ_OP_TYPES and not any(o in used for o in n.output)]
        if not unused:
            return
        for node in unused:
            model.graph.node.remove(node)


def int8_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the non-Q/DQ nodes that take at least one input straight from a DequantizeLinear."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    return [node.name for node in model.graph.node if node.op_type not in QDQ_OP_TYPES
            and any(producers.get(name) == "DequantizeLinear" for name in node.input)]


@contextlib.contextmanager
def _quiet_ort_quantizer() -> Iterator[None]:
    """Silence ORT's per-chunk prints and its advice to pre-process (declined on purpose, see above)."""

    def advice(record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(advice)


def quantize_onnx(
    fp32_onnx: Path,
    out: Path,
    calibration: CalibrationSet,
    policy: PrecisionPolicy,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> QuantizationReport:
    """Write the Q/DQ form of `fp32_onnx` to `out` (atomically: nothing is left there on failure)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    if batch_size < 1 or calibration.num_images < 1:
        raise QuantizationError(f"need a positive batch size and at least one calibration image, got batch_size "
                                f"{batch_size} and {calibration.num_images} images")
    model = _load_fp32(fp32_onnx, calibration)
    candidates = quantizable_nodes(model)
    kept = policy.float_nodes(model)
    to_quantize = [name for name in candidates if name not in kept]
    if not to_quantize:  # ORT reads an empty node list as "every node"
        raise QuantizationError(f"policy {policy.name} keeps all {len(candidates)} quantizable nodes of "
                                f"{fp32_onnx} float: there is nothing to quantize")
    op_types = sorted({node.op_type for node in model.graph.node if node.name in set(to_quantize)})
    reader = _CalibrationReader(calibration, batch_size, progress)
    try:
        with atomic_output(out) as tmp:
            with _quiet_ort_quantizer():
                quantize_static(
                    str(fp32_onnx), str(tmp), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types, nodes_to_quantize=to_quantize, per_channel=True,
                    reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, CALIBRATE_METHOD),
                    calibration_providers=["CPUExecutionProvider"],
                    # ORT's loop over strides serves every calibrator, despite the option's name.
                    extra_options={**_ORT_OPTIONS, "CalibStridedMinMax": reader.chunk_batches()},
                )
            quantized = onnx.load(str(tmp))
            _detach_float_nodes(quantized, kept)
            _stamp(quantized, policy, calibration)
            onnx.save(quantized, str(tmp))
            check_onnx(tmp)
    finally:
        reader.close()
    op_of = {node.name: node.op_type for node in model.graph.node}
    return QuantizationReport(
        policy=policy.manifest(), calibration=calibration.identity, calibration_images=calibration.num_images,
        calibrate_method=f"{CALIBRATE_METHOD} {CALIBRATE_PERCENTILE}", quantized_nodes=tuple(int8_nodes(quantized)),
        float_nodes=tuple((name, op_of[name]) for name in candidates if name in kept),
    )


def _stamp(model: onnx.ModelProto, policy: PrecisionPolicy, calibration: CalibrationSet) -> None:
    """Record the policy and calibration in the model's metadata, so a build from the file can report them."""
    stamp = {"policy": policy.manifest(), "calibration": calibration.identity,
             "calibration_source": calibration.description, "quantizer": QUANTIZER_VERSION}
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = json.dumps(stamp, sort_keys=True)
    onnx.helper.set_model_props(model, props)


def read_quantization_metadata(qdq_onnx: Path) -> dict[str, Any] | None:
    """What `quantize_onnx` recorded in a Q/DQ ONNX (policy, calibration identity); None for other files."""
    return quantization_metadata(load_onnx(qdq_onnx), str(qdq_onnx))


def quantization_metadata(model: onnx.ModelProto, where: str = "the ONNX model") -> dict[str, Any] | None:
    """`read_quantization_metadata` of a graph already read; ValueError when the record is damaged."""
    value = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if value is None:
        return None
    try:
        stamp = json.loads(value)
    except ValueError as error:
        raise ValueError(f"{where}: unreadable {METADATA_KEY} metadata ({error}); quantize it again") from error
    missing = [key for key in ("policy", "calibration") if not isinstance(stamp, dict) or key not in stamp]
    if missing:
        raise ValueError(f"{where}: its {METADATA_KEY} metadata lacks {', '.join(missing)}; quantize it again")
    return dict(stamp)


def qdq_manifest(fp32_onnx: Path, calibration: CalibrationSet, policy: PrecisionPolicy) -> dict[str, Any]:
    """Every input of a quantization: the cache key of a Q/DQ ONNX."""
    import onnxruntime

    return {
        "artifact": "qdq-onnx",
        "quantizer": QUANTIZER_VERSION,
        "onnxruntime": onnxruntime.__version__,
        "fp32_onnx_sha256": onnx_content_sha256(Path(fp32_onnx)),
        "calibration": calibration.identity,
        "policy": policy.manifest(),
        "calibrate_method": [CALIBRATE_METHOD, CALIBRATE_PERCENTILE],
    }


def cached_qdq_onnx(fp32_onnx: Path, calibration: CalibrationSet, policy: PrecisionPolicy, cache_dir: Path) -> Path:
    """The Q/DQ ONNX for (fp32 ONNX, calibration data, policy), quantized once and then read from the cache."""

    def build(directory: Path) -> None:
        quantize_onnx(fp32_onnx, directory / QDQ_ONNX_FILENAME, calibration, policy)

    entry = cached_build(cache_dir, "qdq-onnx", qdq_manifest(fp32_onnx, calibration, policy), build)
    return entry / QDQ_ONNX_FILENAME
