#!/usr/bin/env bash
# On the GPU machine (through the device tool, carrying .whl with expecttest): the quick test subset on
# that machine's torch / triton / transformers, then the GPU tests. Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1 || cat "$OUT/install.log"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
export PYTHONUNBUFFERED=1
python3 -m pytest -m "not slow" -q -n 8 -p no:cacheprovider "$@" 2>&1 | tee "$OUT/pytest.log" | tail -40
python3 tools/probe_generate_cpu.py 2>&1 | grep "inductor_moe="
