#!/usr/bin/env bash
# One device call: GPU pytest cases, kernel correctness, layer benchmark. Logs and JSON to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1
export PYTHONUNBUFFERED=1
export INDUCTOR_MOE_UNVERIFIED=${INDUCTOR_MOE_UNVERIFIED:-1}  # this call is what verifies the Triton kernels
timeout 150 python3 -m pytest tests/test_gpu.py tests/patterns/test_pass.py::test_training_graph_is_not_rewritten -q -p no:cacheprovider 2>&1 | tail -5
timeout ${CHECK_S:-200} python3 tools/gpu_check.py ${CHECK_ARGS:---quick} --budget-s $(( ${CHECK_S:-200} - 40 )) --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log" | grep -v " ok$" | tail -15
timeout ${BENCH_S:-240} python3 benchmarks/bench_moe_layer.py ${BENCH_ARGS:-} --budget-s $(( ${BENCH_S:-240} - 60 )) --out "$OUT/bench_moe_layer.json" 2>&1 | tee "$OUT/bench.log" | tail -20
