"""`levit-trt` info/export/eval end to end on this machine, and its errors for bad input."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from levit_trt.cli import BROKEN_PIPE_STATUS, build_parser, main
from levit_trt.data import write_synthetic_imagenet

DATA = Path(__file__).parent / "data"


def test_info_reports_backends_and_reasons(capsys) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert '"cpu"' in out and "onnxruntime" in out and "cpu" in out
    assert "available" in out


def test_export_writes_a_checked_onnx_through_the_cache(tmp_path: Path, capsys, monkeypatch) -> None:
    # torchscript: what is tested is the CLI's path through the cache, the same for both exporters, and the legacy
    # export of LeViT-128S took 2 s here against 38 s with dynamo (tests/test_export.py checks both graphs).
    # export_onnx itself silences the legacy exporter's deprecation warning.
    out, cache = tmp_path / "out" / "levit.onnx", tmp_path / "cache"
    argv = ["export", "--variant", "LeViT-128S", "--weights", "random", "--exporter", "torchscript", "--out", str(out)]
    assert main([*argv, "--cache-dir", str(cache)]) == 0
    assert onnx.load(str(out)).graph.output[0].name == "logits"
    assert [p.name for p in out.parent.iterdir()] == ["levit.onnx"]  # no temporary left beside it
    (cached,) = cache.glob("onnx/*/model.onnx")
    assert "exported into the cache" in capsys.readouterr().out
    assert out.read_bytes() == cached.read_bytes()

    # The repeat is a cache hit, whether the cache is named by --cache-dir or LEVIT_TRT_CACHE: nothing is exported.
    out.unlink()
    monkeypatch.setattr("levit_trt.export.export_onnx", _no_export)
    monkeypatch.setenv("LEVIT_TRT_CACHE", str(cache))
    assert main(argv) == 0
    assert f"cache hit: {cached}" in capsys.readouterr().out
    assert out.read_bytes() == cached.read_bytes()


def _no_export(*args: object, **kwargs: object) -> None:
    raise AssertionError("exported again instead of reading the cache")


@pytest.mark.parametrize("how", ["--cache-dir", "LEVIT_TRT_CACHE"])
def test_export_refuses_an_unusable_cache_dir(how: str, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "levit.onnx"
    argv = ["export", "--weights", "random", "--out", str(out)]
    if how == "--cache-dir":
        argv += ["--cache-dir", "/proc/nope"]
    else:
        monkeypatch.setenv("LEVIT_TRT_CACHE", "/proc/nope")
    assert main(argv) == 2
    assert "cache directory /proc/nope is not writable" in capsys.readouterr().err
    assert not out.exists()


def test_eval_on_an_imagenet_layout_tree(tmp_path: Path, capsys) -> None:
    root = write_synthetic_imagenet(tmp_path / "imagenet", num_classes=3, images_per_class=2)
    (root / "val" / "n00000001" / "broken.JPEG").write_bytes(b"not a jpeg")
    results = tmp_path / "acc.json"
    code = main(["eval", "--variant", "128S", "--weights", "random", "--data-path", str(root), "--limit", "7",
                 "--classes", "3", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "c"), "--out", str(results)])
    assert code == 0
    (result,) = json.loads(results.read_text())["results"]
    assert result["images"] == 6 and result["unreadable"] == 1
    assert result["unreadable_examples"][0].endswith("broken.JPEG")
    captured = capsys.readouterr()
    assert "top-1" in captured.out
    assert f"unreadable (not counted), {root / 'val' / 'n00000001' / 'broken.JPEG'}" in captured.err  # named


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "--variant", "512", "--weights", "random", "--out", "x.onnx"], "unknown LeViT variant '512'"),
        (["export", "--weights", "nowhere.pth", "--out", "x.onnx"], "weights file nowhere.pth does not exist"),
        (["eval", "--weights", "random", "--data-path", "missing-root"], "ImageNet root missing-root does not exist"),
        (["eval", "--weights", "random", "--data-path", ".", "--backend", "trt"], "no 'val/' folder"),
    ],
)
def test_bad_input_is_a_clear_error(argv: list[str], message: str, capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_eval_refuses_a_tree_missing_class_folders(tmp_path: Path, capsys) -> None:
    root = write_synthetic_imagenet(tmp_path / "imagenet", num_classes=3, images_per_class=1)
    assert main(["eval", "--weights", "random", "--data-path", str(root), "--limit", "3", "--workers", "0",
                 "--device", "cpu", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "has 3 class folders, expected 1000" in capsys.readouterr().err


def test_unknown_backend_and_precision_are_errors(tmp_path: Path, capsys) -> None:
    root = write_synthetic_imagenet(tmp_path / "imagenet", num_classes=1, images_per_class=1)
    base = ["eval", "--weights", "random", "--data-path", str(root), "--limit", "1", "--classes", "0",
            "--workers", "0", "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    assert main([*base, "--backend", "trt"]) == 2
    assert "unknown backend 'trt'" in capsys.readouterr().err
    assert main([*base, "--precision", "fp16"]) == 2
    assert "does not run fp16 on cpu" in capsys.readouterr().err


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", list(_subcommands()))
def test_every_option_has_help_and_help_shows_defaults(command: str) -> None:
    parser = _subcommands()[command]
    undocumented = [action.option_strings[0] for action in parser._actions
                    if action.option_strings and action.help in (None, "")]
    assert not undocumented, f"levit-trt {command}: options without help text: {undocumented}"
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        shown = action.default not in (None, False, [], argparse.SUPPRESS)
        if action.option_strings and shown and "default" not in (action.help or ""):
            assert f"(default: {action.default})" in text, f"levit-trt {command} --help: no default for {action.dest}"


def test_top_level_help_is_for_users() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "LeViT image classifiers from PyTorch to ONNX and TensorRT" in text
    assert "argument parsing" not in text  # the module docstring, for developers


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    """`levit-trt report RUN | head`: the reader is gone before the table is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "levit_trt.cli", "report", str(DATA / "run_h100_old.json")],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, check=False,
                                cwd=Path(__file__).parents[1], timeout=120)
    finally:
        os.close(write_end)
    assert result.stderr == "" and result.returncode == BROKEN_PIPE_STATUS
