#!/usr/bin/env bash
# The device checks in one call, for a lent GPU machine once the wheels are installed
# (scripts/device_wheels.sh): the GPU tests, the loader benchmark (DALI GPU vs the reference loader,
# batch 256) and the full-size train-step benchmark per ZeRO stage. Results go to $OUT (the device
# tool's folder) or benchmarks/results/gpu. Not run yet: no GPU has been lent to this project so far.
#
#   scripts/gpu_check.sh [CLIPS]      # CLIPS synthetic 10 s clips for the loader benchmark (2048)
set -uo pipefail
out=${OUT:-benchmarks/results/gpu}
clips=${1:-2048}
data=/tmp/deteclap-gpu-check
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python -m pytest -q tests/test_gpu.py tests/test_dali.py tests/test_audio.py 2>&1 | tail -30 | tee "$out/pytest.txt"
if [ ! -f "$data/shards/dataset.json" ]; then
  python -m deteclap.synth "$data/clips" --clips "$clips" --workers 16 &&
  python -m deteclap.shard "$data/clips" "$data/shards" --workers 16 --samples-per-shard 256 --quiet
fi
python benchmarks/loader.py --shards "$data/shards" --batch 256 --workers 8 --batches 16 --repeats 3 \
  --loaders dali_gpu,reference --json "$out/loader.json" --plot "$out/loader.png" 2>&1 | tail -20 | tee "$out/loader.txt"
python benchmarks/train_step.py --model full --stages 0,1,2,3 --json "$out/train_step.json" 2>&1 | tail -20 \
  | tee "$out/train_step.txt"
