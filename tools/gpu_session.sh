#!/usr/bin/env bash
# Everything GPU-side in one command: build the plugin op, run the GPU tests, check the kernel with
# compute-sanitizer, measure the softmax kernel, and run the latency matrix.
#
#   tools/gpu_session.sh [STAGE ...]      stages: build tests sanitizer softmax matrix (default: all)
#
# Run from the repository root on a CUDA machine with torch, timm, onnx and onnxruntime installed
# (the project itself need not be pip-installed: the repository root goes on PYTHONPATH).
# Results go to $OUT (default ./gpu-results): gpu.log (everything printed), softmax.json,
# latency.json (pytest-benchmark), latency.md (levit-trt report of it).
# TEST_ARGS: pytest arguments of the tests stage (default "-m gpu -n 4": the GPU tests, in xdist
# workers so that a test that crashes its process fails alone). Matrix selection: MATRIX_VARIANTS
# (default 384), MATRIX_BACKENDS (default auto: every CUDA backend available), MATRIX_PRECISIONS
# (fp32,fp16), MATRIX_BATCHES (1,16,64), MATRIX_ARGS (more pytest arguments, e.g. --cuda-graphs).
set -uo pipefail

OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export LEVIT_TRT_CACHE=${LEVIT_TRT_CACHE:-$PWD/build/cache}
stages=${*:-build tests sanitizer softmax matrix}
failed=()
exec > >(tee -a "$OUT/gpu.log") 2>&1

run_stage() {
    local name=$1
    shift
    echo "=== $name: $* ($(date -u +%H:%M:%S))"
    local started=$SECONDS
    if "$@"; then
        echo "=== $name: ok in $((SECONDS - started)) s"
    else
        echo "=== $name: FAILED (exit $?) after $((SECONDS - started)) s"
        failed+=("$name")
    fi
}

build() {
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DLEVIT_BUILD_TRT_PLUGIN=OFF -DPython3_EXECUTABLE="$(command -v python3)" >/dev/null \
        && cmake --build build -j
}

for stage in $stages; do
    case $stage in
    build)
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        python3 -c "import torch, timm, onnx, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'timm', timm.__version__, 'onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__)"
        run_stage build build
        ;;
    tests)
        # xdist workers: a test that crashes its process fails alone instead of ending the stage
        # shellcheck disable=SC2086
        run_stage tests python3 -m pytest tests -q -rs -p no:cacheprovider ${TEST_ARGS:--m gpu -n 4}
        ;;
    sanitizer)
        for tool in memcheck racecheck; do
            run_stage "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
                python3 tools/softmax_gpu_check.py --correctness-only
        done
        ;;
    softmax)
        run_stage softmax python3 tools/softmax_gpu_check.py --sweep
        ;;
    matrix)
        # shellcheck disable=SC2086
        run_stage matrix python3 -m pytest benchmarks/test_latency.py -q -rs -p no:cacheprovider \
            --variants "${MATRIX_VARIANTS:-384}" --backends "${MATRIX_BACKENDS:-auto}" \
            --precisions "${MATRIX_PRECISIONS:-fp32,fp16}" --batch-sizes "${MATRIX_BATCHES:-1,16,64}" \
            --benchmark-json "$OUT/latency.json" --benchmark-columns median,iqr,rounds ${MATRIX_ARGS:-}
        if [ -f "$OUT/latency.json" ] && python3 -c "import levit_trt.report" 2>/dev/null; then
            python3 -m levit_trt.cli report "$OUT/latency.json" | tee "$OUT/latency.md"
        fi
        ;;
    *)
        echo "unknown stage $stage (build tests sanitizer softmax matrix)"
        failed+=("$stage")
        ;;
    esac
done

echo "=== stages failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
