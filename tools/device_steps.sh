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
    *) echo "unknown step $step" ;;
  esac
done
echo "=== done ($(date +%T))"
