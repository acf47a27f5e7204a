#!/usr/bin/env bash
# The device checks for a lent GPU machine once the wheels are installed (scripts/device_wheels.sh
# install): in two stages that each fit one device call (at most 600 s; each step has its own time
# limit, so one hang cannot spend the session's device time). Results go to $OUT (the device tool's
# folder) or benchmarks/results/gpu. Not run yet: no GPU has been lent to this project so far.
#
#   scripts/gpu_check.sh tests    # GPU tests (NVDEC vs the reference loader, fbank / noise on CUDA), then
#                                 # the DALI tests on that machine                          (<= 420 s)
#   scripts/gpu_check.sh bench    # 1024 synthetic clips, the loader benchmark (DALI GPU vs the reference
#                                 # loader, batch 256), the full-size train step per ZeRO stage (<= 570 s)
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
    timeout 240 "$py" -m pytest -q -x tests/test_gpu.py tests/test_audio.py 2>&1 | tail -30 | tee "$out/pytest_gpu.txt"
    timeout 180 "$py" -m pytest -q tests/test_dali.py 2>&1 | tail -15 | tee "$out/pytest_dali.txt"
    ;;
  bench)
    if [ ! -f "$data/shards/dataset.json" ]; then
      timeout 90 "$py" -m deteclap.synth "$data/clips" --clips 1024 --workers 16 | tail -2
      timeout 90 "$py" -m deteclap.shard "$data/clips" "$data/shards" --workers 16 --samples-per-shard 128 --quiet
    fi
    timeout 180 "$py" benchmarks/loader.py --shards "$data/shards" --batch 256 --workers 8 --batches 12 --repeats 3 \
      --loaders dali_gpu,reference --json "$out/loader.json" --plot "$out/loader.png" 2>&1 | tail -20 \
      | tee "$out/loader.txt"
    timeout 210 "$py" benchmarks/train_step.py --model full --stages 0,1,2,3 --json "$out/train_step.json" 2>&1 \
      | tail -20 | tee "$out/train_step.txt"
    ;;
  *) echo "usage: $0 tests | bench" >&2; exit 2 ;;
esac
