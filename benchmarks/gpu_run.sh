#!/usr/bin/env bash
# Run ON THE GPU BOX (after gpu_prep.sh here; carry .whl and .bench): the whole GPU table in one command,
# about 5 minutes on an H100/H200. Extra arguments go to bench_train.py (e.g. --examples 128).
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
out=${OUT:-/tmp}
python3 benchmarks/bench_train.py --gpu --verbose "$@" 2>"$out/bench_train.stderr" | tee "$out/bench_train.txt"
