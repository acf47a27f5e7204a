#!/usr/bin/env bash
# The GPU machine's checks, one prepared sequence (docs/GPU.md: the calls, what each carries, minutes).
#
#   scripts/gpu_check.sh probe     # first call, before any wheel: nvidia-smi, the NVDEC verdict line;
#                                  # exit 3 when NVDEC cannot decode the shards' VP9 (stop there)
#   scripts/gpu_check.sh stage1    # after `device_wheels.sh install stage1`: the GPU tests, the DALI
#                                  # tests, then the loader benchmark (DALI GPU at 8 and 14 threads vs the
#                                  # reference loader, batch 256, 512 clips read 8x)             (<= 420 s)
#   scripts/gpu_check.sh stage2    # after `device_wheels.sh install stage2`: the full-size train step
#                                  # (ZeRO 2), then 30 steps of real training on DALI GPU batches (<= 200 s)
#
# Each step has its own time limit, so one hang cannot spend the session's device time; full logs go
# to $OUT (the device tool's folder: at most 8 files come back, stage1 writes 8) or
# benchmarks/results/gpu, the console shows their tails. The benchmarks append their runs to
# $OUT/history.jsonl: add its lines to benchmarks/results/history.jsonl here.
set -uo pipefail
stage=${1:?usage: gpu_check.sh probe | stage1 | stage2}
out=${OUT:-benchmarks/results/gpu}
data=/tmp/deteclap-gpu-check
py=${PYTHON:-python3}
clips=${CLIPS:-512} batch=${BATCH:-256} cores=${CORES:-16}   # smaller for a rehearsal on a CPU machine
site=${SITE:-/tmp/site}                       # where scripts/device_wheels.sh installs the carried wheels
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PATH="$site/bin:$PATH"                 # the deepspeed launcher, if a test needs it
mkdir -p "$out"
status=0
step() {   # step SECONDS LOG COMMAND...: run with a time limit, keep the log, show its tail
  local limit=$1 log=$2; shift 2
  echo "== $* (<= ${limit} s)"
  timeout "$limit" "$@" > "$out/$log" 2>&1
  local rc=$?
  tail -15 "$out/$log"
  [ "$rc" -eq 0 ] || { echo "!! exit $rc: $*"; status=$rc; }
}
case "$stage" in
  probe)
    { nvidia-smi; nvidia-smi -q | grep -i -A3 -E "^ *(Encoder|Decoder|MIG Mode)"; "$py" --version; } \
      > "$out/machine.txt" 2>&1
    head -12 "$out/machine.txt"
    "$py" -m dali_pipes.nvdec | tee "$out/nvdec.txt"     # one verdict line; exit 3: no NVDEC
    exit "${PIPESTATUS[0]}"
    ;;
  stage1)
    step 90 pytest_gpu.log "$py" -m pytest -q -x -rfEs --tb=short -p no:cacheprovider tests/test_gpu.py tests/test_audio.py
    step 80 pytest_dali.log "$py" -m pytest -q -rfE --tb=short -p no:cacheprovider tests/test_dali.py
    if [ ! -f "$data/shards/dataset.json" ]; then
      step 60 synth.log "$py" -m deteclap.synth "$data/clips" --clips "$clips" --workers "$cores"
      step 40 shard.log "$py" -m deteclap.shard "$data/clips" "$data/shards" --workers "$cores" --samples-per-shard 128 \
        --quiet
    fi
    step 150 loader.log "$py" benchmarks/loader.py --shards "$data/shards" --replicate 8 --batch "$batch" --workers 14 \
      --threads 8,14 --batches 16 --warmup 2 --repeats 1 --loaders dali_gpu,reference \
      --json "$out/loader.json" --plot "$out/loader.png"
    ;;
  stage2)
    step 120 train_step.log "$py" benchmarks/train_step.py --model full --stages 2 --steps 10 --json "$out/train_step.json"
    step 80 train.log "$py" deteclap/train.py --config configs/cavmae.json --set "data.train_shards=$data/shards" \
      --set "data.eval_shards=$data/shards" --set data.loader=dali --set data.dali_device=gpu \
      --set data.batch_size=48 --set run.max_steps=30 --set run.log_every=10 --set run.checkpoint_every=1000 \
      --set "run.out_dir=$data/run"
    cp "$data/run/summary.json" "$out/train_summary.json" 2>/dev/null
    ;;
  *) echo "usage: $0 probe | stage1 | stage2" >&2; exit 2 ;;
esac
exit "$status"
