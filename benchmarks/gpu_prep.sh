#!/usr/bin/env bash
# Run HERE (with PyPI access) before the GPU run: what bench_train.py --gpu needs that the GPU box lacks.
#  .whl/   pure-Python wheels the box does not have (gguf, tomli_w), installed there by gpu_run.sh;
#  .bench/gemma.header   Gemma 3 270M Q4_K_M's header (a few MB: metadata, tokenizer, tensor table), from
#          which the box rebuilds the file's exact layout with random blocks (the 246 MB model cannot travel).
# Both folders are git-ignored locally (.git/info/exclude); carry them: run(carry=[".whl", ".bench"]).
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.bench/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
mkdir -p .whl .bench
ver() { python3 -m pip show "$1" | awk '/^Version/{print $2}'; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl "gguf==$(ver gguf)" "tomli_w==$(ver tomli_w)"
python3 benchmarks/bench_quantized.py --save-header .bench/gemma.header
ls -la .whl .bench
