#!/usr/bin/env bash
# One device call: decode-tile sweep (benchmarks/tune_decode.py), then the end-to-end generate() benchmark
# (benchmarks/bench_e2e.py). Output in $OUT: tune_decode.json (the config table to commit), bench_e2e.json.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1
export PYTHONUNBUFFERED=1
export INDUCTOR_MOE_UNVERIFIED=${INDUCTOR_MOE_UNVERIFIED:-1}
if [ "${DECODE_S:-120}" -gt 0 ]; then
  timeout ${DECODE_S:-120} python3 benchmarks/tune_decode.py --out "$OUT/tune_decode.json" 2>&1 | grep -v "Warn\|warn" | tail -8
fi
[ -f benchmarks/results/bench_e2e.json ] && cp benchmarks/results/bench_e2e.json "$OUT/bench_e2e.json"
timeout ${E2E_S:-420} python3 benchmarks/bench_e2e.py ${E2E_ARGS:---models qwen3_moe --batches 1,8} \
  --budget-s $(( ${E2E_S:-420} - 150 )) --timeout-s 240 --out "$OUT/bench_e2e.json" 2>&1 | grep -v "Warn\|warn_once" | tail -40
