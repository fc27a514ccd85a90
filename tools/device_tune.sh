#!/usr/bin/env bash
# One device call: tune the Triton expert tiles (benchmarks/tune_experts.py) while the quick CPU test subset
# runs beside it on this machine's torch / triton / transformers; then a per-kernel profile. Output in $OUT.
# Copy $OUT/tune.json to inductor_moe/kernels/triton/configs/<device>.json afterwards.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1
export PYTHONUNBUFFERED=1 INDUCTOR_MOE_UNVERIFIED=1
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
if [ -n "${CPU_TESTS:-1}" ]; then
  (CUDA_VISIBLE_DEVICES= TRITON_INTERPRET=1 timeout ${TEST_S:-480} python3 -m pytest -m "not slow and not gpu" -q -n 3 \
     -p no:cacheprovider > "$OUT/pytest_cpu.log" 2>&1; echo "cpu tests rc=$?" >> "$OUT/pytest_cpu.log") &
fi
timeout ${TUNE_S:-500} python3 benchmarks/tune_experts.py ${TUNE_ARGS:-} --budget-s $(( ${TUNE_S:-500} - 40 )) \
  --out "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log" | grep -v "failed:" | tail -40
timeout 60 python3 benchmarks/bench_moe_layer.py --profile ${PROFILE:-qwen3:1,qwen3:4096} 2>&1 | tail -24
wait
tail -5 "$OUT/pytest_cpu.log" 2>/dev/null
