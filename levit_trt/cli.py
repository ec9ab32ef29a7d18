"""`levit-trt`: argument parsing only; each subcommand calls one library function.

Each subcommand is one `_add_<name>` function that declares its arguments and sets `handler`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

DESCRIPTION = (
    "LeViT image classifiers from PyTorch to ONNX and TensorRT: export and build engines, quantize to INT8, "
    "measure ImageNet accuracy, and turn saved benchmark runs into tables and comparisons. "
    "`levit-trt info` says what this machine can run."
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None, an off flag) or its help states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == [] or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _common_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default="128S", help="LeViT variant: 128S, 128, 192, 256 or 384")
    parser.add_argument("--weights", default="pretrained",
                        help="'pretrained': timm's ImageNet weights from the Hugging Face hub, downloaded on first use "
                             "(offline, set HF_HUB_OFFLINE=1 to use the downloaded copy, or fail at once instead of "
                             "retrying the hub); 'random[:SEED]': seeded test weights, no download; or the path of a "
                             ".pth/.safetensors checkpoint (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="artifact cache (default: LEVIT_TRT_CACHE or ~/.cache/levit_trt)")


def _info(args: argparse.Namespace) -> int:
    from levit_trt.backends.registry import BACKENDS, backend_class
    from levit_trt.environment import machine_info
    from levit_trt.tensorrt.binding import describe_flavors

    print(json.dumps(machine_info(), indent=2))
    print("\nTensorRT flavors (build with levit-trt build --flavor NAME; the backends below say where they run):")
    for flavor, found in describe_flavors().items():
        state = (f"installed: {found['version']} (CUDA {found['cuda'] or 'unknown'})" if found["installed"]
                 else f"not installed: {found['reason']}")
        print(f"  {flavor:10s} {state}")
    print("\nbackends:")
    for name in BACKENDS:
        cls = backend_class(name)
        for device, precisions in cls.supported.items():
            status = cls.availability(device)
            state = "available" if status.available else f"unavailable: {status.reason}"
            print(f"  {name:16s} {device:5s} {'/'.join(precisions):20s} {state}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="what backends and devices are available here, and why not")
    parser.set_defaults(handler=_info)


def _export(args: argparse.Namespace) -> int:
    import shutil

    from levit_trt.cache import atomic_output, ensure_cache_dir
    from levit_trt.export import ExportOptions, cached_onnx, find_cached_onnx
    from levit_trt.variants import resolve_variant
    from levit_trt.weights import parse_weights

    variant = resolve_variant(args.variant)
    options = ExportOptions(opset=args.opset, exporter=args.exporter, precision=args.precision,
                            softmax_plugin=args.softmax_plugin)
    weights = parse_weights(args.weights)
    cache_dir = ensure_cache_dir(args.cache_dir)
    cached = find_cached_onnx(variant, weights, options, cache_dir)
    hit = cached is not None
    onnx_path = cached if cached is not None else cached_onnx(variant, weights, options, cache_dir)
    with atomic_output(args.out) as tmp:
        shutil.copyfile(onnx_path, tmp)
    print(f"wrote {args.out} ({variant.display}, {options}; {'cache hit' if hit else 'exported into the cache'}: "
          f"{onnx_path})")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export a prepared LeViT to ONNX (dynamic batch)")
    _common_model_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="dynamo: torch.export, PyTorch's supported exporter; torchscript: the legacy tracer")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="weights and I/O type of the graph (fp16 for TensorRT 11's strongly typed fp16 engines)")
    parser.add_argument("--softmax-plugin", action="store_true",
                        help="replace last-axis Softmax nodes with the levit_trt softmax plugin")
    parser.set_defaults(handler=_export)


def _eval(args: argparse.Namespace) -> int:
    from levit_trt.accuracy import append_results, evaluate
    from levit_trt.backends.base import ModelSource, set_tf32
    from levit_trt.backends.registry import create_backend
    from levit_trt.cache import ensure_cache_dir
    from levit_trt.data import ImageNetFolder, LoaderOptions, imagenet_loader
    from levit_trt.environment import machine_info
    from levit_trt.variants import resolve_variant
    from levit_trt.weights import parse_weights

    variant = resolve_variant(args.variant)
    weights = parse_weights(args.weights)
    loader = imagenet_loader(args.data_path, variant, LoaderOptions(
        batch_size=args.batch_size, workers=args.workers, limit=args.limit, split=args.split,
        classes=args.classes or None))
    set_tf32(args.tf32)
    source = ModelSource(variant, weights, ensure_cache_dir(args.cache_dir))
    backend = create_backend(args.backend, source, args.precision, args.device)
    dataset = cast(ImageNetFolder, loader.dataset)  # what imagenet_loader batches
    result = evaluate(backend, loader, variant=variant, weights=weights.describe(),
                      samples=dataset.samples, extra={"data_path": str(args.data_path), "limit": args.limit})
    print(f"{variant.display} {backend.name} {backend.precision}: top-1 {result.top1:.2f}  "
          f"top-5 {result.top5:.2f}  ({result.images} images, {result.unreadable} unreadable, "
          f"{result.images_per_s:.0f} img/s)")
    if result.unreadable:
        shown = len(result.unreadable_examples)
        print(f"unreadable (not counted), {'' if shown == result.unreadable else f'first {shown}: '}"
              + ", ".join(result.unreadable_examples), file=sys.stderr)
    if args.out:
        append_results(args.out, [result], machine_info())
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="top-1/top-5 of one backend on an ImageNet-layout folder")
    _common_model_args(parser)
    parser.add_argument("--data-path", type=Path, required=True, help="ImageNet root holding val/<wnid>/<image>")
    parser.add_argument("--split", default="val", help="folder under --data-path to evaluate on")
    parser.add_argument("--backend", default="torch", help="backend to evaluate (levit-trt info lists them)")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16, bf16 or int8, where the backend runs it")
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu",
                        help="cpu or cuda (default here: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per inference call")
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: CPU cores - 1)")
    parser.add_argument("--limit", type=int, default=None, help="seeded class-balanced subset of N images")
    parser.add_argument("--classes", type=int, default=1000,
                        help="class folders the split must hold (default 1000: labels are folder positions, so a "
                             "missing one would shift the rest; 0 accepts any number)")
    parser.add_argument("--tf32", action="store_true", help="let fp32 on the GPU use TF32 (default: strict fp32)")
    parser.add_argument("--out", type=Path, default=None, help="accuracy JSON to append the result to")
    parser.set_defaults(handler=_eval)


def _report(args: argparse.Namespace) -> int:
    from levit_trt.report import DEFAULT_BASELINE, latency_rows, report_markdown, save_plot
    from levit_trt.runs import load_run, load_top1

    run = load_run(args.run)
    top1 = load_top1(args.accuracy) if args.accuracy else None
    print(report_markdown(run, top1, args.baseline or DEFAULT_BASELINE), end="")
    if args.plot:
        print(f"\nwrote {save_plot(latency_rows(run), args.plot)}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="Markdown latency tables (and a PNG plot) from a saved benchmark run")
    parser.add_argument("run", type=Path, help="pytest-benchmark JSON (pytest benchmarks --benchmark-json RUN.json)")
    parser.add_argument("--accuracy", type=Path, default=None, help="accuracy JSON (levit-trt eval --out) for top-1")
    parser.add_argument("--baseline", default=None,
                        help="BACKEND-PRECISION the speed-ups are against, e.g. torch-cudagraph-fp16 (default torch-fp32)")
    parser.add_argument("--plot", type=Path, default=None, help="also write latency against batch as this PNG")
    parser.set_defaults(handler=_report)


def _compare(args: argparse.Namespace) -> int:
    from levit_trt.report import compare

    comparison = compare(args.old, args.new, args.fail_above, allow_different_machines=args.allow_different_machines)
    warning = comparison.machine_warning()
    if warning:
        print(f"levit-trt compare: {warning}", file=sys.stderr)
    print(comparison.to_markdown(), end="")
    return 1 if comparison.regressions else 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("compare", help="per-case new/old latency ratios of two saved benchmark runs")
    parser.add_argument("old", type=Path, help="pytest-benchmark JSON of the earlier run")
    parser.add_argument("new", type=Path, help="pytest-benchmark JSON of the later run")
    parser.add_argument("--fail-above", type=float, default=None, metavar="PCT",
                        help="flag cases more than PCT%% slower and exit with status 1 if there are any")
    parser.add_argument("--allow-different-machines", action="store_true",
                        help="compare runs whose device, GPU, CPU, driver, CUDA or torch/TensorRT/ONNX Runtime "
                             "versions differ (refused otherwise), with a warning")
    parser.set_defaults(handler=_compare)


def _add_policy_args(parser: argparse.ArgumentParser) -> None:
    """The INT8 precision-policy arguments, spelled the same in build and quantize."""
    from levit_trt.precision_policy import DEFAULT_POLICY, POLICIES

    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help="which layers INT8 keeps float: "
                             + "; ".join(f"{name}: {policy.description}" for name, policy in POLICIES.items())
                             + " (default: %(default)r)")
    parser.add_argument("--float-op-types", nargs="+", action="extend", default=[], metavar="OP",
                        help="more ONNX op types to keep float")
    parser.add_argument("--float-nodes", nargs="+", action="extend", default=[], metavar="NODE",
                        help="more node names to keep float")


def _build(args: argparse.Namespace) -> int:
    from levit_trt.tensorrt.engine_file import build_engine_file
    from levit_trt.tensorrt.options import EngineOptions

    options = EngineOptions(
        precision=args.precision, flavor=args.flavor, compute_capabilities=tuple(args.compute_capability),
        min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
        tf32=args.tf32, opt_level=args.opt_level, workspace_mib=args.workspace_mib, timing_cache=args.timing_cache,
        int8_mode=args.int8_mode, policy=args.policy, float_op_types=tuple(args.float_op_types),
        float_nodes=tuple(args.float_nodes), calib_dir=args.calib)
    engine = build_engine_file(args.onnx, args.engine, options, plugin_libraries=args.plugins, cache_dir=args.cache_dir)
    print(f"wrote {args.engine} and its layer report (engine cache key {engine.key}; layers by precision: "
          f"{engine.precision_summary()})")
    return 0


def _add_build(sub: argparse._SubParsersAction) -> None:
    from levit_trt.tensorrt.options import (
        DEFAULT_BATCH_RANGE,
        DEFAULT_OPT_LEVEL,
        ENGINE_PRECISIONS,
        FLAVORS,
        INT8_MODES,
        RTX_TARGETS,
    )

    parser = sub.add_parser("build", help="build a TensorRT engine from an ONNX file (with its layer report beside it)")
    parser.add_argument("--onnx", type=Path, required=True, help="ONNX file (levit-trt export, or levit-trt quantize)")
    parser.add_argument("--engine", type=Path, required=True, help="engine file to write; <engine>.layers.json beside it")
    parser.add_argument("--precision", choices=ENGINE_PRECISIONS, default="fp32", help="engine precision")
    parser.add_argument("--flavor", choices=FLAVORS, default="tensorrt",
                        help="tensorrt: TensorRT 10/11, builds on the GPU it targets; rtx: TensorRT-RTX, builds without "
                             "a GPU (pip install -e '.[rtx]')")
    parser.add_argument("--compute-capability", type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
                        default=[], metavar="CC,...",
                        help=f"RTX target compute capabilities, e.g. 80,86 (of {', '.join(RTX_TARGETS)}; default: "
                             "RTX's own set)")
    parser.add_argument("--plugins", type=Path, nargs="+", default=[],
                        help="TensorRT plugin libraries to load besides ours (the softmax and attention plugin libraries are "
                             "loaded when the ONNX has their nodes)")
    parser.add_argument("--min-batch", type=int, default=DEFAULT_BATCH_RANGE[0], help="smallest batch the engine takes")
    parser.add_argument("--opt-batch", type=int, default=DEFAULT_BATCH_RANGE[1], help="batch TensorRT tunes for")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_BATCH_RANGE[2], help="largest batch the engine takes")
    parser.add_argument("--opt-level", type=int, default=DEFAULT_OPT_LEVEL, help="builder optimisation level 0-5")
    parser.add_argument("--workspace-mib", type=int, default=None, help="workspace limit (default: TensorRT's)")
    parser.add_argument("--timing-cache", type=Path, default=None, help="persistent tactic timing cache file")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 layers (off by default)")
    parser.add_argument("--int8-mode", choices=INT8_MODES, default="qdq",
                        help="qdq: explicit Q/DQ ONNX (TensorRT 10, 11 and RTX); calibrator: TensorRT 10 implicit calibration")
    _add_policy_args(parser)
    parser.add_argument("--calib", type=Path, default=None, help="calibration data from levit-trt calibrate (INT8)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="artifact cache (default: LEVIT_TRT_CACHE or ~/.cache/levit_trt)")
    parser.set_defaults(handler=_build)


def _calibrate(args: argparse.Namespace) -> int:
    from levit_trt.calibration import write_calibration_set

    calibration = write_calibration_set(args.data_path, args.variant, args.num_images, args.out, split=args.split,
                                        seed=args.seed, workers=args.workers)
    print(f"wrote {args.out}: {calibration.description}, {calibration.identity}")
    return 0


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("calibrate", help="write preprocessed INT8 calibration images from an ImageNet-layout folder")
    parser.add_argument("--data-path", type=Path, required=True, help="ImageNet root holding <split>/<wnid>/<image>")
    parser.add_argument("--num-images", type=int, required=True, help="images to pick, spread over classes")
    parser.add_argument("--out", type=Path, required=True, help="directory to write (replaced if it holds a set)")
    parser.add_argument("--variant", default="128S", help="LeViT variant whose preprocessing to apply")
    parser.add_argument("--split", choices=("train", "val"), default="train",
                        help="train (default) or val (then val accuracy is measured on calibration images)")
    parser.add_argument("--seed", type=int, default=0, help="which images are picked")
    parser.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    parser.set_defaults(handler=_calibrate)


def _quantize(args: argparse.Namespace) -> int:
    from levit_trt.calibration import load_calibration_set
    from levit_trt.precision_policy import resolve_policy
    from levit_trt.quantize import quantize_onnx

    policy = resolve_policy(args.policy, args.float_op_types, args.float_nodes)
    report = quantize_onnx(args.onnx, args.out, load_calibration_set(args.calib), policy,
                           batch_size=args.batch_size, progress=True)
    print(f"wrote {args.out}: {report.summary()}")
    return 0


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("quantize", help="fp32 ONNX -> Q/DQ INT8 ONNX (for TensorRT and ONNX Runtime)")
    parser.add_argument("--onnx", type=Path, required=True, help="fp32 ONNX from levit-trt export")
    parser.add_argument("--calib", type=Path, required=True, help="calibration set from levit-trt calibrate")
    parser.add_argument("--out", type=Path, required=True, help="Q/DQ ONNX file to write")
    _add_policy_args(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="calibration batch size")
    parser.set_defaults(handler=_quantize)


# --- profile: GPU time by kernel category (levit_trt.profile) ---------------------------------------

def _profile(args: argparse.Namespace) -> int:
    from levit_trt.backends.base import ModelSource, set_tf32
    from levit_trt.backends.registry import backend_class, create_backend
    from levit_trt.cache import ensure_cache_dir
    from levit_trt.profile import profile_backend
    from levit_trt.variants import resolve_variant
    from levit_trt.weights import parse_weights, synthetic_images

    if args.device == "cuda" and not _cuda_available():
        raise RuntimeError("profiling on --device cuda needs a GPU, and torch sees none here "
                           "(torch.cuda.is_available() is False); --device cpu profiles CPU op times instead")
    variant = resolve_variant(args.variant)
    set_tf32(args.tf32)
    options = {}
    if args.plugin:
        backend_class(args.backend).check_plugin(args.plugin)  # a backend without that choice says so
        options["plugin"] = args.plugin
    source = ModelSource(variant, parse_weights(args.weights), ensure_cache_dir(args.cache_dir))
    backend = create_backend(args.backend, source, args.precision, args.device, **options)
    images = backend.prepare_input(synthetic_images(args.batch, variant.input_size, seed=args.batch))
    run = {"variant": variant.name, "batch": args.batch, "weights": args.weights, "tf32": args.tf32,
           **backend.describe()}
    summary = profile_backend(backend, images, forwards=args.forwards, warmup=args.warmup, top=args.top, run=run)
    print(f"{variant.display} {backend.name} {backend.precision} batch {args.batch} on {args.device}")
    print(summary.to_text(), end="")
    if args.json:
        summary.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _add_profile(sub: argparse._SubParsersAction) -> None:
    from levit_trt.backends.base import PLUGINS

    parser = sub.add_parser("profile", help="GPU time per forward by kernel category (GEMM, attention, softmax, ...), "
                                            "the top kernels and kernels per forward")
    _common_model_args(parser)
    parser.add_argument("--backend", default="torch", help="backend to profile (levit-trt info lists them)")
    parser.add_argument("--precision", default="fp16", help="precision to run the backend in (fp32, fp16, bf16, int8)")
    parser.add_argument("--batch", type=int, default=16, help="images per forward")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (kernel times), or cpu (CPU op self times, for checking the command without a GPU)")
    parser.add_argument("--plugin", choices=PLUGINS, default=None,
                        help="for plugin backends: the fused attention plugin (default) or the softmax-only one")
    parser.add_argument("--forwards", type=int, default=20, help="profiled forwards, after --warmup")
    parser.add_argument("--warmup", type=int, default=5, help="unprofiled forwards first")
    parser.add_argument("--top", type=int, default=15, help="kernels to list")
    parser.add_argument("--tf32", action="store_true", help="let fp32 on the GPU use TF32 (default: strict fp32)")
    parser.add_argument("--json", type=Path, default=None, help="also write the profile as JSON here")
    parser.set_defaults(handler=_profile)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


SUBCOMMANDS = [_add_info, _add_export, _add_eval, _add_calibrate, _add_quantize, _add_build, _add_report, _add_compare,
               _add_profile]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="levit-trt", description=DESCRIPTION, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_SubcommandParser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser, with the same help formatter as the top level."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


# What a shell reports for a command killed by SIGPIPE (128 + 13), as `head` leaves `cat` and friends.
BROKEN_PIPE_STATUS = 141


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:
        # The reader went away (`levit-trt report RUN | head`): stop quietly, as Unix tools do. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS
    except (ValueError, RuntimeError, OSError) as error:
        print(f"levit-trt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
