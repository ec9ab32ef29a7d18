#!/usr/bin/env bash
# Everything GPU-side in one command: build the plugin ops, run the GPU tests, check both kernels
# with compute-sanitizer, measure the softmax and fused attention kernels, profile a forward, time
# every attention form end to end, run the latency matrix, and profile single attention launches with ncu.
#
#   tools/gpu_session.sh [STAGE ...]
#     stages: build tests sanitizer softmax attention profile end-to-end matrix ncu
#     (default: build tests sanitizer attention profile end-to-end)
#
# Run from the repository root on a CUDA machine with torch, timm, onnx and onnxruntime installed
# (the project itself need not be pip-installed: the repository root goes on PYTHONPATH).
# Results go to $OUT (default ./gpu-results): gpu.log (everything printed) and, since the device
# tool brings back only a few files, session.tar.gz holding every JSON and table the stages wrote
# (softmax.json, attention.json, profile-*.json/.txt, end_to_end.json, latency.json/.md,
# ncu-*.txt).
# STAGE_TIMEOUT (seconds, default 300) caps each stage.
# ATTENTION_ARGS: more tools/attention_gpu_check.py arguments (e.g. --sweep).
# TEST_ARGS: pytest arguments of the tests stage (default "-m gpu -n 8": the GPU tests, in xdist
# workers so that a test that crashes its process fails alone). PROFILE_VARIANT (384),
# PROFILE_BACKENDS (torch,torch-sdpa,torch-plugin), PROFILE_BATCH (16). E2E_VARIANTS (all),
# E2E_BATCHES (16), E2E_ARGS (more tools/end_to_end_interleaved.py arguments, e.g. --no-compile).
# Matrix selection: MATRIX_VARIANTS (384), MATRIX_BACKENDS (auto: every CUDA backend available),
# MATRIX_PRECISIONS (fp32,fp16), MATRIX_BATCHES (1,16,64), MATRIX_ARGS (e.g. --cuda-graphs),
# MATRIX_REPORT_ARGS (e.g. --baseline torch-cudagraph-fp16 where the run has no torch fp32 case).
# NCU_LAUNCHES: the attention launches the ncu stage profiles, as variant:layer:batch (default
# "384:downsample1:64 192:downsample1:16"); one ncu-<variant>-<layer>-b<batch>.txt each.
set -uo pipefail

top=${OUT:-$PWD/gpu-results}
RESULTS=$top/session
mkdir -p "$RESULTS"
# The check tools write their JSON to $OUT: point it at the folder that is packed at the end.
export OUT=$RESULTS PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export LEVIT_TRT_CACHE=${LEVIT_TRT_CACHE:-$PWD/build/cache}
stages=${*:-build tests sanitizer attention profile end-to-end}
limit=${STAGE_TIMEOUT:-300}
failed=()
exec > >(tee -a "$top/gpu.log") 2>&1

run_stage() {
    local name=$1
    shift
    echo "=== $name: $* ($(date -u +%H:%M:%S))"
    local started=$SECONDS
    local runner=(timeout "$limit")
    declare -F "$1" >/dev/null && runner=()  # a shell function (build, profile): timeout cannot run it
    if "${runner[@]}" "$@"; then
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

profile() {
    local backend status=0
    for backend in ${PROFILE_BACKENDS:-torch torch-sdpa torch-plugin}; do
        python3 -m levit_trt.cli profile --variant "${PROFILE_VARIANT:-384}" --weights random --backend "$backend" \
            --precision fp16 --batch "${PROFILE_BATCH:-16}" --json "$RESULTS/profile-$backend.json" \
            | tee "$RESULTS/profile-$backend.txt" || status=1
    done
    return $status
}

ncu_launches() {
    local launch variant layer batch report status=0
    for launch in ${NCU_LAUNCHES:-384:downsample1:64 192:downsample1:16}; do
        IFS=: read -r variant layer batch <<<"$launch"
        report=$RESULTS/ncu-$variant-$layer-b$batch.txt
        timeout "$limit" ncu --clock-control none -k regex:attention --launch-skip 2 --launch-count 1 \
            --section SpeedOfLight --section LaunchStats --section Occupancy --section SchedulerStats \
            --section WarpStateStats --section MemoryWorkloadAnalysis --section SourceCounters \
            --metrics smsp__inst_executed.sum \
            python3 tools/attention_launch.py --variant "$variant" --layer "$layer" --batch "$batch" \
            >"$report" 2>&1 || status=1
        # ncu exits 0 when no kernel matched: a report without the counter is a failure too.
        grep -q inst_executed "$report" || status=1
        grep -E "attention|Duration|inst_executed|Issued Warp" "$report"
    done
    return $status
}

for stage in $stages; do
    case $stage in
    build)
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
        python3 -c "import torch, timm, onnx, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'timm', timm.__version__, 'onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__)"
        run_stage build build
        ;;
    tests)
        # shellcheck disable=SC2086
        run_stage tests python3 -m pytest tests -q -rs -p no:cacheprovider ${TEST_ARGS:--m gpu -n 8}
        ;;
    sanitizer)
        for tool in memcheck racecheck; do
            run_stage "softmax-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
                python3 tools/softmax_gpu_check.py --correctness-only
            run_stage "attention-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
                python3 tools/attention_gpu_check.py --correctness-only
        done
        ;;
    softmax)
        run_stage softmax python3 tools/softmax_gpu_check.py --sweep
        ;;
    attention)
        # shellcheck disable=SC2086
        run_stage attention python3 tools/attention_gpu_check.py ${ATTENTION_ARGS:-}
        ;;
    profile)
        run_stage profile profile
        ;;
    end-to-end)
        # shellcheck disable=SC2086
        run_stage end-to-end python3 tools/end_to_end_interleaved.py --variants "${E2E_VARIANTS:-all}" \
            --batches "${E2E_BATCHES:-16}" --json "$RESULTS/end_to_end.json" ${E2E_ARGS:-}
        ;;
    matrix)
        # shellcheck disable=SC2086
        run_stage matrix python3 -m pytest benchmarks/test_latency.py -q -rs -p no:cacheprovider \
            --variants "${MATRIX_VARIANTS:-384}" --backends "${MATRIX_BACKENDS:-auto}" \
            --precisions "${MATRIX_PRECISIONS:-fp32,fp16}" --batch-sizes "${MATRIX_BATCHES:-1,16,64}" \
            --benchmark-json "$RESULTS/latency.json" --benchmark-columns median,iqr,rounds ${MATRIX_ARGS:-}
        if [ -f "$RESULTS/latency.json" ]; then
            # shellcheck disable=SC2086
            python3 -m levit_trt.cli report "$RESULTS/latency.json" ${MATRIX_REPORT_ARGS:-} | tee "$RESULTS/latency.md"
        fi
        ;;
    ncu)
        run_stage ncu ncu_launches
        ;;
    *)
        echo "unknown stage $stage (build tests sanitizer softmax attention profile end-to-end matrix ncu)"
        failed+=("$stage")
        ;;
    esac
done

tar -czf "$top/session.tar.gz" -C "$RESULTS" . && rm -rf "$RESULTS"
echo "=== stages failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
