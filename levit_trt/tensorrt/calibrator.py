"""TensorRT 10's implicit INT8: the entropy calibrator fed from PyTorch, and fp32 constraints on the float layers.

A TensorRT 10 path only (11 and RTX removed IInt8Calibrator); `builder.TensorRTBuilder` sets it up.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

from levit_trt.tensorrt.binding import tensorrt_module
from levit_trt.tensorrt.layer_report import onnx_node_names

if TYPE_CHECKING:
    import tensorrt as trt
    import torch
    from typing_extensions import Buffer

    from levit_trt.tensorrt.engine_cache import CalibrationJob


@dataclasses.dataclass
class CalibrationResult:
    cache: bytes | None = None  # what the calibrator wrote
    error: BaseException | None = None  # raised while TensorRT was calling the calibrator


@contextlib.contextmanager
def calibration_errors_first(result: CalibrationResult) -> Iterator[None]:
    """Raise the calibrator's stored error after the build, even when the build failed: TensorRT only saw "no more
    batches" and fails with a message of its own, which then hangs off the real cause as its __context__."""
    try:
        yield
    finally:
        if result.error is not None:
            raise result.error


def entropy_calibrator(job: CalibrationJob, device: torch.device,
                       result: CalibrationResult) -> trt.IInt8EntropyCalibrator2:
    """TensorRT 10's IInt8EntropyCalibrator2 fed from the job's batches through one PyTorch CUDA buffer."""
    import torch

    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module("tensorrt")

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.buffer = torch.empty((job.batch_size, *job.input_shape), dtype=torch.float32, device=device)
            self.batches = job.batches()

        def get_batch_size(self) -> int:
            return job.batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            try:
                batch = next(self.batches)
            except StopIteration:
                return []  # no more batches
            except Exception as error:  # noqa: BLE001 - any data error: TensorRT cannot carry it, raised after the build
                result.error = error
                return []
            self.buffer.copy_(batch)
            torch.cuda.synchronize(device)  # TensorRT reads the buffer on its own stream
            return [self.buffer.data_ptr()]

        def read_calibration_cache(self) -> bytes | None:  # None means "no cache: calibrate" (TensorRT's docs)
            return job.cache

        def write_calibration_cache(self, cache: Buffer) -> None:
            result.cache = bytes(cache)

    return EntropyCalibrator()


def pin_float_layers(network: trt.INetworkDefinition, job: CalibrationJob) -> None:
    """fp32 precision and output types on the layers the policy keeps float (OBEY_PRECISION_CONSTRAINTS holds them)."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module("tensorrt")
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for index in job.layers_kept_float([onnx_node_names(layer.metadata) for layer in layers]):
        layer = layers[index]
        outputs = [i for i in range(layer.num_outputs) if layer.get_output(i).dtype in (trt.float32, trt.float16)]
        if not outputs:
            continue  # shape and index layers have no float precision to keep
        layer.precision = trt.float32
        for output in outputs:
            layer.set_output_type(output, trt.float32)
