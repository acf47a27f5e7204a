#!/usr/bin/env bash
# The device checks in one call, for a lent GPU machine once the wheels are installed
# (scripts/device_wheels.sh install): the GPU tests, the loader benchmark (DALI GPU vs the reference
# loader, batch 256) and the full-size train-step benchmark per ZeRO stage, most important first,
# each step under its own time limit so that one hang cannot spend the session's device time.
# Results go to $OUT (the device tool's folder) or benchmarks/results/gpu. Not run yet: no GPU has
# been lent to this project so far.
#
#   scripts/gpu_check.sh [CLIPS]      # CLIPS synthetic 10 s clips for the loader benchmark (1024)
#
# Estimated device time (from this 2-core machine's rates): synthesis + sharding of 1024 clips on 16
# cores ~45 s, tests ~60 s, loader benchmark ~60 s, train steps ~2 min.
set -uo pipefail
out=${OUT:-benchmarks/results/gpu}
clips=${1:-1024}
data=/tmp/deteclap-gpu-check
py=${PYTHON:-python3}
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PATH="/tmp/site/bin:$PATH"            # the deepspeed launcher, if a test needs it
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
timeout 240 "$py" -m pytest -q -x tests/test_gpu.py tests/test_audio.py 2>&1 | tail -30 | tee "$out/pytest_gpu.txt"
if [ ! -f "$data/shards/dataset.json" ]; then
  timeout 150 "$py" -m deteclap.synth "$data/clips" --clips "$clips" --workers 16 | tail -2 &&
  timeout 150 "$py" -m deteclap.shard "$data/clips" "$data/shards" --workers 16 --samples-per-shard 128 --quiet
fi
timeout 240 "$py" benchmarks/loader.py --shards "$data/shards" --batch 256 --workers 8 --batches 12 --repeats 3 \
  --loaders dali_gpu,reference --json "$out/loader.json" --plot "$out/loader.png" 2>&1 | tail -20 | tee "$out/loader.txt"
timeout 300 "$py" benchmarks/train_step.py --model full --stages 0,1,2,3 --json "$out/train_step.json" 2>&1 | tail -20 \
  | tee "$out/train_step.txt"
timeout 240 "$py" -m pytest -q tests/test_dali.py 2>&1 | tail -15 | tee "$out/pytest_dali.txt"
