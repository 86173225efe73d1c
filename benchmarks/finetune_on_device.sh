#!/usr/bin/env bash
# The fine-tune phase of benchmarks/quality.py on a lent GPU machine (no network, its own torch):
# every row's seed-0 fine-tune (quality rows, then the latency rows when prepared), then the rows
# that decide a claim, until the time given. Needs, carried from here: .whl/ (torch_pruning's wheel),
# .fmnist/ (Debian's Fashion-MNIST files), benchmarks/.cache/full/{quality,latency}-models and the
# rows already fine-tuned (benchmarks/.cache/full/*-finetune.json).
#     OUT=/tmp/out MINUTES=6 bash benchmarks/finetune_on_device.sh
set -euo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
mkdir -p /usr/share/datasets
[ -e /usr/share/datasets/fashion-mnist ] || ln -s "$PWD/.fmnist" /usr/share/datasets/fashion-mnist
nvidia-smi -L || true
for f in quality-finetune.json latency-finetune.json; do   # rows finished earlier are skipped
  [ -f "$OUT/$f" ] || [ ! -f "benchmarks/.cache/full/$f" ] || cp "benchmarks/.cache/full/$f" "$OUT/$f"
done
run() { python3 benchmarks/quality.py --only finetune --workers 8 --models ${MODELS:-vgg8 resnet56} "$@"; }
run --first --rows "$OUT/quality-finetune.json"
if [ -d benchmarks/.cache/full/latency-models ]; then
  run --first --folder benchmarks/.cache/full/latency-models --rows "$OUT/latency-finetune.json"
fi
run --minutes "${MINUTES:-6}" --rows "$OUT/quality-finetune.json"
