"""How the TensorRT package reports errors, on a CPU machine: the pure-Python parts of levit_trt.tensorrt.

The TensorRT logger keeps a bounded number of recent errors for exception messages; a calibration
data error, which TensorRT only sees as "no more batches", is raised in place of the build failure
it causes.
"""

from __future__ import annotations

import pytest

from levit_trt.tensorrt.binding import ErrorLog
from levit_trt.tensorrt.calibrator import CalibrationResult, calibration_errors_first


def test_error_log_quotes_the_errors_since_a_mark_and_keeps_only_the_recent_ones() -> None:
    log = ErrorLog(limit=3)
    assert log.since(log.mark()) == "no error was logged"
    log.append("first")
    mark = log.mark()
    log.append("second")
    log.append("third")
    assert log.since(mark) == "second; third"
    for index in range(10):
        log.append(f"later {index}")
    assert log.since(mark) == "later 7; later 8; later 9"  # only `limit` are kept
    assert log.since(log.mark()) == "no error was logged"


def test_calibration_error_replaces_the_build_failure_it_caused() -> None:
    result = CalibrationResult()
    with pytest.raises(ValueError, match="calibration batch 3 is float16") as raised, calibration_errors_first(result):
        result.error = ValueError("calibration batch 3 is float16")
        raise RuntimeError("TensorRT could not build an engine: no error was logged")
    assert isinstance(raised.value.__context__, RuntimeError)  # the build failure stays attached


def test_calibration_error_is_raised_after_a_build_that_succeeded() -> None:
    result = CalibrationResult()
    with pytest.raises(ValueError, match="bad batch"), calibration_errors_first(result):
        result.error = ValueError("bad batch")  # TensorRT calibrated on the batches before it


def test_build_failure_without_a_calibration_error_is_raised_as_it_is() -> None:
    with pytest.raises(RuntimeError, match="could not build"), calibration_errors_first(CalibrationResult()):
        raise RuntimeError("could not build")
