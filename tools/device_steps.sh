#!/usr/bin/env bash
# One device call running the steps named in STEPS (space-separated), each under its own time limit
# (<STEP>_S seconds), logs and JSON into $OUT. Every step is resumable from its JSON in benchmarks/results/.
#   STEPS="tests rel mxfp4 bench_mxfp4 e2e layer" bash tools/device_steps.sh
# tests:        the quick suite (-m "not slow") on this machine's torch/triton/transformers, xdist
# rel:          tools/gpu_reliability.py $REL_ARGS (default --models gpt_oss)
# mxfp4:        tools/gpu_check_mxfp4.py
# bench_mxfp4:  benchmarks/bench_mxfp4.py $MXFP4_ARGS
# e2e:          benchmarks/bench_e2e.py $E2E_ARGS
# layer:        benchmarks/bench_moe_layer.py $LAYER_ARGS
# cross:        benchmarks/bench_route_sort.py (fused route+sort vs route + sort crossover)
# prefill:      benchmarks/bench_prefill_paths.py $PREFILL_ARGS (fused Triton stages vs grouped GEMMs)
# check:        tools/gpu_check.py $CHECK_ARGS (kernel correctness, 251 cases, resumable)
# profile:      per-kernel profiles of layers (bench_moe_layer.py --profile $PROFILE)
# profile_decode: tools/profile_decode.py $PROFILE_DECODE_ARGS (kernel time per generated token)
# tune:         benchmarks/tune_experts.py $TUNE_ARGS (copy $OUT/tune.json to kernels/triton/configs/)
# tune_decode:  benchmarks/tune_decode.py (decode GEMV tiles into $OUT/tune_decode.json)
# tune_mxfp4:   benchmarks/tune_mxfp4_decode.py $TUNE_MXFP4_ARGS (opt-in MXFP4 decode v2 tiles)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1
export PYTHONUNBUFFERED=1
# only 8 files come back from $OUT: each step copies in just the results file it resumes from
# results of another GPU than the H100 go to files of their own (e.g. bench_e2e_h200.json): rows are not keyed
# by device, so an H200 run must neither resume from nor mix with the H100 rows
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$GPU" in *H100*|"") SUF="" ;; *) SUF="_$(echo "$GPU" | sed 's/NVIDIA //; s/ .*//' | tr 'A-Z' 'a-z')" ;; esac
echo "GPU: $GPU (results suffix '${SUF}')"
resume() { [ -f "benchmarks/results/$1$SUF.json" ] && cp "benchmarks/results/$1$SUF.json" "$OUT/"; true; }
res() { echo "$OUT/$1$SUF.json"; }
filt() { grep -v "Warn\|warn_once\|UserWarning" | tail -"${1:-25}"; }
for step in ${STEPS:-tests}; do
  echo "=== $step ($(date +%T))"
  case $step in
    tests)
      timeout ${TESTS_S:-240} python3 -m pytest -m "not slow" -v -n ${TESTS_N:-12} -p no:cacheprovider \
        -rf ${TESTS_ARGS:-} > "$OUT/pytest_gpu.log" 2>&1
      echo "rc=$?"; grep -E "passed|failed" "$OUT/pytest_gpu.log" | tail -3
      grep -E "(FAILED|ERROR) tests" "$OUT/pytest_gpu.log" | sed "s/.*\(FAILED\|ERROR\) //; s/::.*//" | sort | uniq -c | head -20 ;;
    rel)
      resume reliability
      timeout ${REL_S:-200} python3 tools/gpu_reliability.py ${REL_ARGS:---models gpt_oss} --out "$(res reliability)" 2>&1 | filt 12 ;;
    mxfp4)
      resume gpu_check_mxfp4
      timeout ${MXFP4_S:-150} python3 tools/gpu_check_mxfp4.py --budget-s $(( ${MXFP4_S:-150} - 20 )) --out "$(res gpu_check_mxfp4)" 2>&1 \
        | tee "$OUT/gpu_check_mxfp4.log" | grep -v " ok$" | filt 15 ;;
    bench_mxfp4)
      resume bench_mxfp4
      timeout ${BENCH_MXFP4_S:-150} python3 benchmarks/bench_mxfp4.py ${MXFP4_ARGS:-} --budget-s $(( ${BENCH_MXFP4_S:-150} - 20 )) \
        --out "$(res bench_mxfp4)" 2>&1 | filt 25 ;;
    e2e)
      resume bench_e2e
      timeout ${E2E_S:-420} python3 benchmarks/bench_e2e.py ${E2E_ARGS:-} --budget-s $(( ${E2E_S:-420} - 120 )) --timeout-s 240 \
        --out "$(res bench_e2e)" 2>&1 | filt 40 ;;
    layer)
      resume bench_moe_layer
      timeout ${LAYER_S:-200} python3 benchmarks/bench_moe_layer.py ${LAYER_ARGS:-} --budget-s $(( ${LAYER_S:-200} - 40 )) \
        --out "$(res bench_moe_layer)" 2>&1 | filt 30 ;;
    cross)
      resume bench_route_sort
      timeout ${CROSS_S:-90} python3 benchmarks/bench_route_sort.py --out "$(res bench_route_sort)" 2>&1 | filt 30 ;;
    prefill)
      resume prefill_paths
      timeout ${PREFILL_S:-300} python3 benchmarks/bench_prefill_paths.py ${PREFILL_ARGS:-} --budget-s $(( ${PREFILL_S:-300} - 60 )) \
        --out "$(res prefill_paths)" 2>&1 | filt 30 ;;
    check)
      resume gpu_check
      timeout ${CHECK_S:-200} python3 tools/gpu_check.py ${CHECK_ARGS:-} --budget-s $(( ${CHECK_S:-200} - 30 )) \
        --out "$(res gpu_check)" 2>&1 | tee "$OUT/gpu_check.log" | grep -v " ok$" | filt 12 ;;
    profile)
      timeout ${PROFILE_S:-60} python3 benchmarks/bench_moe_layer.py --profile ${PROFILE:-qwen3:1,gpt_oss:1,qwen3:4096} \
        2>&1 | filt 30 ;;
    profile_decode)
      timeout ${PROFILE_DECODE_S:-200} python3 tools/profile_decode.py ${PROFILE_DECODE_ARGS:-} > "$OUT/profile_decode.log" 2>&1
      filt 40 < "$OUT/profile_decode.log" ;;
    tune)
      timeout ${TUNE_S:-500} python3 benchmarks/tune_experts.py ${TUNE_ARGS:-} --budget-s $(( ${TUNE_S:-500} - 40 )) \
        --out "$(res tune)" 2>&1 | tee "$OUT/tune.log" | grep -v "failed:" | filt 40 ;;
    tune_decode)
      timeout ${TUNE_DECODE_S:-120} python3 benchmarks/tune_decode.py --out "$(res tune_decode)" 2>&1 | filt 8 ;;
    tune_mxfp4)
      timeout ${TUNE_MXFP4_S:-540} python3 benchmarks/tune_mxfp4_decode.py ${TUNE_MXFP4_ARGS:---layers gpt_oss} \
        --budget-s $(( ${TUNE_MXFP4_S:-540} - 20 )) --out "$(res tune_mxfp4_decode)" 2>&1 | filt 30 ;;
    *) echo "unknown step $step" ;;
  esac
done
echo "=== done ($(date +%T))"
