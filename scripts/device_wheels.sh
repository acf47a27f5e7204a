#!/usr/bin/env bash
# Bring the wheels the GPU machine lacks (it reaches no package registry) in parts of <= 60 MiB.
#
#   scripts/device_wheels.sh download            # here: fetch both stages' wheels into .wheels/, split into parts
#   scripts/device_wheels.sh list                # here: the parts of each stage, their sizes
#   scripts/device_wheels.sh carry STAGE N       # there, one device call per part: append .wheels/STAGE/partNN
#   scripts/device_wheels.sh install STAGE       # there, once every part of a stage has been carried
#
# docs/GPU.md is the plan (which call carries what, how long each takes). Stage 1 is the data path
# only: DALI for CUDA 13 with the three modules its pipelines import there (astunparse, gast,
# optree), and PyAV, soundfile, cffi, pycparser for the fixtures and the reference loader. Stage 2
# adds DeepSpeed (built here into a pure-Python wheel, no C++ ops) and the modules it imports that
# the machine lacks (hjson, pydantic and its three). Left out on purpose: DALI's image-codec
# extras (nvImageCodec, nvCOMP: no image is decoded by DALI here, and a wheel that ships
# nvidia/__init__.py would shadow the machine's own nvidia.* packages: `download` refuses one),
# webdataset (DALI reads the tars itself), and what the machine has (torch 2.11 + CUDA 13,
# torchaudio, timm, numpy, packaging, six, typing-extensions, msgpack, ninja, py-cpuinfo, einops,
# psutil, tqdm, nvidia-ml-py).
#
# The device tool carries at most 64 MiB per call (the ~1 MB working tree included): each call
# carries [".wheels/STAGE/partNN", ".wheels/STAGE/SHA256SUMS"]. `carry STAGE N` checks the part's
# sha256 and that /tmp/wheels/STAGE.bin holds exactly parts 0..N-1 (exit 3 "FRESH" when the
# machine was given back in between: start that stage again at part 0). `install STAGE` unpacks
# the wheels into /tmp/site (scripts/gpu_check.sh puts it first on PYTHONPATH), leaving the
# machine's own environment as it is, and imports what the stage brought.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
STAGE1="nvidia-dali-cuda130==2.4.0 astunparse==1.6.3 gast==0.7.0 optree==0.20.0
  av==18.1.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12"
STAGE2="hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5"
DEEPSPEED=deepspeed==0.19.8
SITE=/tmp/site
PART_BYTES=$((60 * 1024 * 1024))        # split -b 60M
PY=${PYTHON:-python3}                 # carry / install: the GPU machine's python3 (3.12)
BUILD_PY=${BUILD_PYTHON:-$here/.venv/bin/python}   # download: an environment with pip (and torch, for DeepSpeed)
IMPORTS_stage1="import nvidia.dali, av, soundfile; print('stage1 wheels ok: DALI', nvidia.dali.__version__)"
IMPORTS_stage2="import deepspeed, hjson, pydantic; print('stage2 wheels ok: DeepSpeed', deepspeed.__version__)"

fetch() {   # fetch STAGE WHEELS...: cp312 manylinux x86_64 wheels, no dependencies resolved
  local dir=$here/.wheels/$1/src; shift
  rm -rf "$dir" && mkdir -p "$dir"
  "$BUILD_PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}

pack() {   # pack STAGE: refuse a wheel shipping nvidia/__init__.py, then one tar split into parts
  local stage=$here/.wheels/$1 wheel
  for wheel in "$stage"/src/*.whl; do
    if unzip -l "$wheel" | awk '{print $4}' | grep -qx "nvidia/__init__.py"; then
      echo "$(basename "$wheel") ships nvidia/__init__.py: it would shadow the machine's nvidia.* packages" >&2
      exit 5
    fi
  done
  rm -f "$stage"/part* "$stage"/SHA256SUMS
  (cd "$stage/src" && tar cf ../all.tar ./*.whl)
  (cd "$stage" && split -b 60M -d all.tar part && rm all.tar && sha256sum part* > SHA256SUMS)
}

case "${1:-}" in
  download)
    # shellcheck disable=SC2086
    fetch stage1 $STAGE1
    # shellcheck disable=SC2086
    fetch stage2 $STAGE2
    # DeepSpeed is an sdist whose setup.py imports torch: built with this project's environment
    DS_BUILD_OPS=0 "$BUILD_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$here/.wheels/stage2/src" "$DEEPSPEED"
    pack stage1 && pack stage2
    "$0" list
    ;;
  list)
    for stage in stage1 stage2; do
      echo "$stage: $(du -ch "$here/.wheels/$stage"/src/*.whl | tail -1 | cut -f1) in $(ls "$here/.wheels/$stage"/part* | wc -l) part(s)"
      ls -l "$here/.wheels/$stage"/part* | awk '{printf "  %s %.1f MiB\n", $NF, $5 / 1048576}'
    done
    ;;
  carry)
    stage=${2:?carry STAGE N}; n=${3:?carry STAGE N (the part number, from 0)}
    part=$(printf "part%02d" "$n")
    mkdir -p /tmp/wheels
    bin=/tmp/wheels/$stage.bin
    have=$(stat -c%s "$bin" 2>/dev/null || echo 0)
    if [ "$n" -eq 0 ]; then
      rm -f "$bin"
    elif [ "$have" -ne $((n * PART_BYTES)) ]; then
      echo "FRESH: $bin holds $have bytes, not parts 0..$((n - 1)): start $stage again at part 0" >&2
      exit 3
    fi
    (cd "$here/.wheels/$stage" && grep " $part\$" SHA256SUMS | sha256sum -c --quiet) || { echo "$part: bad sha256" >&2; exit 4; }
    cat "$here/.wheels/$stage/$part" >> "$bin"
    echo "carried $stage $part: $bin $(stat -c%s "$bin") bytes"
    ;;
  install)
    stage=${2:?install STAGE}
    dir=/tmp/wheels/$stage
    rm -rf "$dir" && mkdir -p "$dir" && tar xf "/tmp/wheels/$stage.bin" -C "$dir"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$dir"/*.whl
    imports=IMPORTS_$stage
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "${!imports}"
    ;;
  *) echo "usage: $0 download | list | carry STAGE N | install STAGE" >&2; exit 2 ;;
esac
