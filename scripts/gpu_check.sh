#!/usr/bin/env bash
# The device checks for a lent GPU machine once the wheels are installed (scripts/device_wheels.sh
# install): in two stages that each fit one device call (at most 600 s; each step has its own time
# limit, so one hang cannot spend the session's device time). Results go to $OUT (the device tool's
# folder) or benchmarks/results/gpu. Not run yet: no GPU has been lent to this project so far.
#
#   scripts/gpu_check.sh tests    # GPU tests (NVDEC vs the reference loader, fbank / noise on CUDA), then
#                                 # the DALI tests on that machine                          (<= 180 s)
#   scripts/gpu_check.sh bench    # 1024 synthetic clips, the loader benchmark (DALI GPU vs the reference
#                                 # loader, batch 256), the full-size train step, ZeRO 2 and 3 (<= 390 s)
#
# The caps fit the session's 15 minutes of device time after the machine's start and the wheel calls;
# full logs go to $OUT, the console shows their tails.
set -uo pipefail
stage=${1:?usage: gpu_check.sh tests | bench}
out=${OUT:-benchmarks/results/gpu}
data=/tmp/deteclap-gpu-check
py=${PYTHON:-python3}
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PATH="/tmp/site/bin:$PATH"            # the deepspeed launcher, if a test needs it
mkdir -p "$out"
case "$stage" in
  tests)
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1
    timeout 120 "$py" -m pytest -q -x -rfE --tb=short tests/test_gpu.py tests/test_audio.py 2>&1 \
      | tee "$out/pytest_gpu.log" | tail -30
    timeout 60 "$py" -m pytest -q -rfE --tb=short tests/test_dali.py 2>&1 | tee "$out/pytest_dali.log" | tail -15
    ;;
  bench)
    if [ ! -f "$data/shards/dataset.json" ]; then
      timeout 45 "$py" -m deteclap.synth "$data/clips" --clips 1024 --workers 16 | tail -2
      timeout 45 "$py" -m deteclap.shard "$data/clips" "$data/shards" --workers 16 --samples-per-shard 128 --quiet
    fi
    timeout 150 "$py" benchmarks/loader.py --shards "$data/shards" --batch 256 --workers 8 --batches 12 --repeats 3 \
      --loaders dali_gpu,reference --json "$out/loader.json" --plot "$out/loader.png" 2>&1 | tee "$out/loader.log" \
      | tail -20
    timeout 150 "$py" benchmarks/train_step.py --model full --stages 2,3 --json "$out/train_step.json" 2>&1 \
      | tee "$out/train_step.log" | tail -20
    ;;
  *) echo "usage: $0 tests | bench" >&2; exit 2 ;;
esac
