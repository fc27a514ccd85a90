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
for f in benchmarks/results/*.json; do cp "$f" "$OUT/"; done
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
      timeout ${REL_S:-200} python3 tools/gpu_reliability.py ${REL_ARGS:---models gpt_oss} --out "$OUT/reliability.json" 2>&1 | filt 12 ;;
    mxfp4)
      timeout ${MXFP4_S:-150} python3 tools/gpu_check_mxfp4.py --budget-s $(( ${MXFP4_S:-150} - 20 )) --out "$OUT/gpu_check_mxfp4.json" 2>&1 \
        | tee "$OUT/gpu_check_mxfp4.log" | grep -v " ok$" | filt 15 ;;
    bench_mxfp4)
      timeout ${BENCH_MXFP4_S:-150} python3 benchmarks/bench_mxfp4.py ${MXFP4_ARGS:-} --budget-s $(( ${BENCH_MXFP4_S:-150} - 20 )) \
        --out "$OUT/bench_mxfp4.json" 2>&1 | filt 25 ;;
    e2e)
      timeout ${E2E_S:-420} python3 benchmarks/bench_e2e.py ${E2E_ARGS:-} --budget-s $(( ${E2E_S:-420} - 120 )) --timeout-s 240 \
        --out "$OUT/bench_e2e.json" 2>&1 | filt 40 ;;
    layer)
      timeout ${LAYER_S:-200} python3 benchmarks/bench_moe_layer.py ${LAYER_ARGS:-} --budget-s $(( ${LAYER_S:-200} - 40 )) \
        --out "$OUT/bench_moe_layer.json" 2>&1 | filt 30 ;;
    cross)
      timeout ${CROSS_S:-90} python3 benchmarks/bench_route_sort.py --out "$OUT/bench_route_sort.json" 2>&1 | filt 30 ;;
    check)
      timeout ${CHECK_S:-200} python3 tools/gpu_check.py ${CHECK_ARGS:-} --budget-s $(( ${CHECK_S:-200} - 30 )) \
        --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log" | grep -v " ok$" | filt 12 ;;
    profile)
      timeout ${PROFILE_S:-60} python3 benchmarks/bench_moe_layer.py --profile ${PROFILE:-qwen3:1,gpt_oss:1,qwen3:4096} \
        2>&1 | filt 30 ;;
    profile_decode)
      timeout ${PROFILE_DECODE_S:-200} python3 tools/profile_decode.py ${PROFILE_DECODE_ARGS:-} > "$OUT/profile_decode.log" 2>&1
      filt 40 < "$OUT/profile_decode.log" ;;
    tune)
      timeout ${TUNE_S:-500} python3 benchmarks/tune_experts.py ${TUNE_ARGS:-} --budget-s $(( ${TUNE_S:-500} - 40 )) \
        --out "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log" | grep -v "failed:" | filt 40 ;;
    tune_decode)
      timeout ${TUNE_DECODE_S:-120} python3 benchmarks/tune_decode.py --out "$OUT/tune_decode.json" 2>&1 | filt 8 ;;
    tune_mxfp4)
      timeout ${TUNE_MXFP4_S:-540} python3 benchmarks/tune_mxfp4_decode.py ${TUNE_MXFP4_ARGS:---layers gpt_oss} \
        --budget-s $(( ${TUNE_MXFP4_S:-540} - 20 )) --out "$OUT/tune_mxfp4_decode.json" 2>&1 | filt 30 ;;
    *) echo "unknown step $step" ;;
  esac
done
echo "=== done ($(date +%T))"
