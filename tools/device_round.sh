#!/usr/bin/env bash
# One device call: kernel correctness (tools/gpu_check.py), per-layer benchmark with per-kernel profiles
# (benchmarks/bench_moe_layer.py), CUDA-graph reliability of a 2-layer full-width model
# (tools/gpu_reliability.py). Logs and JSON to $OUT; every part is resumable from its JSON.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1
export PYTHONUNBUFFERED=1
export INDUCTOR_MOE_UNVERIFIED=${INDUCTOR_MOE_UNVERIFIED:-1}  # until this script has passed, the kernels are opt-in
for f in gpu_check.json bench_moe_layer.json; do [ -f "benchmarks/results/$f" ] && cp "benchmarks/results/$f" "$OUT/$f"; done
if [ "${CHECK_S:-200}" -gt 0 ]; then
  timeout ${CHECK_S:-200} python3 tools/gpu_check.py ${CHECK_ARGS:-} --budget-s $(( ${CHECK_S:-200} - 30 )) \
    --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log" | grep -v " ok$" | tail -12
fi
if [ "${BENCH_S:-200}" -gt 0 ]; then
  timeout ${BENCH_S:-200} python3 benchmarks/bench_moe_layer.py ${BENCH_ARGS:-} --budget-s $(( ${BENCH_S:-200} - 60 )) \
    --out "$OUT/bench_moe_layer.json" 2>&1 | tee "$OUT/bench.log" | tail -20
  timeout 60 python3 benchmarks/bench_moe_layer.py --profile ${PROFILE:-qwen3:1,gpt_oss:1,qwen3:4096} 2>&1 \
    | grep -v Warn | tail -30
fi
if [ "${REL_S:-150}" -gt 0 ]; then
  timeout ${REL_S:-150} python3 tools/gpu_reliability.py ${REL_ARGS:---models qwen3_moe} --out "$OUT/reliability.json" \
    2>&1 | grep -E "^(qwen3_moe|gpt_oss)|Error" | tail -10
fi
if [ "${PROFILE_DECODE_S:-0}" -gt 0 ]; then
  timeout ${PROFILE_DECODE_S} python3 tools/profile_decode.py ${PROFILE_DECODE_ARGS:-} 2>&1 | grep -v "Warn\|warn_once" | tail -30
fi
