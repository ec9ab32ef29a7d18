#!/usr/bin/env bash
# The fused attention op's GPU session in one command: build the PyTorch ops, run the attention GPU
# tests, check the kernel with compute-sanitizer (memcheck, racecheck) and time it against SDPA and
# the explicit torch form.
#
#   tools/attention_gpu_session.sh [STAGE ...]   stages: build tests memcheck racecheck timing (default: all)
#
# Run from the repository root on a CUDA machine with torch (the repository root goes on PYTHONPATH).
# Everything printed goes to $OUT/attention.log (default ./gpu-results); the timing writes
# $OUT/attention.json. STAGE_TIMEOUT (seconds, default 150) caps each stage but the build and racecheck,
# which RACECHECK_TIMEOUT (default 240) caps.
set -uo pipefail

OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export OUT PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
stages=${*:-build tests memcheck racecheck timing}
limit=${STAGE_TIMEOUT:-150}
failed=()
exec > >(tee -a "$OUT/attention.log") 2>&1

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
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
        python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
        run_stage build build
        ;;
    tests)
        run_stage tests timeout "$limit" python3 -m pytest tests/test_attention_plugin.py -q -rs -x \
            -p no:cacheprovider
        ;;
    memcheck | racecheck)
        stage_limit=$limit
        [ "$stage" = racecheck ] && stage_limit=${RACECHECK_TIMEOUT:-240}
        run_stage "sanitizer-$stage" timeout "$stage_limit" compute-sanitizer --tool "$stage" --error-exitcode 1 \
            python3 tools/attention_gpu_check.py --correctness-only
        ;;
    timing)
        run_stage timing timeout "$limit" python3 tools/attention_gpu_check.py
        ;;
    *)
        echo "unknown stage $stage (build tests memcheck racecheck timing)"
        failed+=("$stage")
        ;;
    esac
done

echo "=== stages failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
