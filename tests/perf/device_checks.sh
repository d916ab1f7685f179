#!/usr/bin/env bash
# Every check that needs a CUDA device, in one run of about 7 minutes on one H100/H200, for a
# session that is lent one: the gpu-marked tests (probe, stats and the training engine in fp32/bf16/fp16
# on GPU against the CPU), the probe's
# time on the GPU (goal < 1 s), and training/extraction throughput against plain torch loops
# (goal >= 80 %), and each pretraining method's images/s against supervised (goal >= 70 % for two-view
# methods). Each part runs even if an earlier one failed; the exit code is the worst one.
# Usage: tests/perf/device_checks.sh [LOG_DIR]   (the device tool's $OUT by default)
set -uo pipefail
cd "$(dirname "$0")/../.."
log="${1:-${OUT:-.}}"
worst=0
step() {
    echo "== $*" | tee -a "$log/device_checks.log"
    "$@" 2>&1 | tee -a "$log/device_checks.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -gt "$worst" ] && worst=$rc
}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$log/device_checks.log"
step python -m pytest -q -m gpu tests
step python tests/perf/bench_probe.py --device cuda --threads 16 --sk-labels 1
step python tests/perf/bench_throughput.py --device cuda --train-channels-last
step python tests/perf/bench_pretrain_speed.py --device cuda --arch resnet50 --size 224 --batch 64 --steps 10 --threads 16
exit "$worst"
