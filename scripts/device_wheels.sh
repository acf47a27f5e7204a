#!/usr/bin/env bash
# Bring the wheels the GPU machine lacks (it reaches no package registry) in <= 60 MiB parts.
#
#   scripts/device_wheels.sh download          # here: fetch wheels into .wheels/, split them into parts
#   scripts/device_wheels.sh carry N           # there, one call per part: append .wheels/partNN
#   scripts/device_wheels.sh install DIR       # there, once every part of .wheels/ has been carried
#
# The device tool carries at most 64 MiB per call (the ~1 MB working tree included) and releases an
# idle machine after ~30 s, so run `carry 0`, `carry 1`, ... in consecutive calls, each with
# carry [".wheels/partNN", ".wheels/SHA256SUMS"]. `carry N` checks the part's sha256 and that
# /tmp/wheels/all.bin holds exactly parts 0..N-1 (exit 3 "FRESH" when the machine was given back in
# between: start again at 0); `carry 0` also writes what the machine offers (nvidia-smi, NVDEC's
# libnvcuvid) to $OUT/machine.txt. The last call: `scripts/device_wheels.sh install /tmp/wheels &&
# scripts/gpu_check.sh tests`, and at once (the machine stays warm ~30 s) `scripts/gpu_check.sh bench`.
# About 300 MB in 5 parts (DALI 199 MB, PyAV 36 MB, nvCOMP 29 MB, nvImageCodec 25 MB). six and
# typing-extensions are on that machine too; carried anyway (tiny) so the versions are the tested ones.
#
# The GPU machine runs Python 3.12 (torch 2.11 + CUDA 13, torchaudio, timm, numpy, msgpack, ninja,
# py-cpuinfo, einops, psutil, tqdm, nvidia-ml-py already there), so the wheels are fetched for
# cp312 / manylinux, at the versions this project is tested with here; DeepSpeed (an sdist on PyPI)
# is built here into a pure-Python wheel. `install` puts them in /tmp/site (scripts/gpu_check.sh
# adds it to PYTHONPATH), leaving the machine's own environment as it is.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# DALI and what it imports (its image-codec extras, nvjpeg / nvjpeg2k / nvtiff, are left out: no image
# is decoded by DALI here), the data path's libraries, DeepSpeed's dependencies the machine lacks
WHEELS="nvidia-dali-cuda130==2.4.0 astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0
  libcst==1.9.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-libnvcomp-cu13==5.3.0.16
  webdataset==1.0.2 braceexpand==0.1.7 av==18.1.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  six==1.17.0 typing-extensions==4.16.0"
DEEPSPEED=deepspeed==0.19.8
SITE=/tmp/site
PART_BYTES=$((60 * 1024 * 1024))        # split -b 60M
PY=${PYTHON:-python3}                 # install: the GPU machine's python3 (3.12)
BUILD_PY=${BUILD_PYTHON:-$here/.venv/bin/python}   # download: this project's environment (has torch)
case "${1:-}" in
  download)
    rm -rf "$here/.wheels" && mkdir -p "$here/.wheels/src"
    # shellcheck disable=SC2086
    "$BUILD_PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$here/.wheels/src" $WHEELS
    # DeepSpeed's setup.py imports torch: build with this project's environment (no C++ ops compiled)
    DS_BUILD_OPS=0 "$BUILD_PY" -m pip wheel --no-deps --no-build-isolation -w "$here/.wheels/src" "$DEEPSPEED"
    # one archive of every wheel, split into parts the device tool can carry
    (cd "$here/.wheels/src" && tar cf ../all.tar ./*.whl)
    (cd "$here/.wheels" && split -b 60M -d all.tar part && rm all.tar && sha256sum part* > SHA256SUMS)
    ls -la "$here/.wheels"
    ;;
  carry)
    n=${2:?carry N (the part number, from 0)}
    part=$(printf "part%02d" "$n")
    mkdir -p /tmp/wheels
    have=$(stat -c%s /tmp/wheels/all.bin 2>/dev/null || echo 0)
    if [ "$n" -eq 0 ]; then
      rm -f /tmp/wheels/all.bin
    elif [ "$have" -ne $((n * PART_BYTES)) ]; then
      echo "FRESH: /tmp/wheels/all.bin holds $have bytes, not parts 0..$((n - 1)): start again at carry 0" >&2
      exit 3
    fi
    (cd "$here/.wheels" && grep " $part\$" SHA256SUMS | sha256sum -c --quiet) || { echo "$part: bad sha256" >&2; exit 4; }
    cat "$here/.wheels/$part" >> /tmp/wheels/all.bin
    echo "carried $part: /tmp/wheels/all.bin $(stat -c%s /tmp/wheels/all.bin) bytes"
    if [ "$n" -eq 0 ]; then
      out=${OUT:-/tmp}
      { nvidia-smi; echo "--- NVDEC libraries:"; ldconfig -p | grep -i nvcuvid
        find / -xdev -name 'libnvcuvid.so*' 2>/dev/null | head -5; "$PY" --version; } > "$out/machine.txt" 2>&1 || true
      grep -q "libnvcuvid.so" "$out/machine.txt" \
        || echo "warning: no libnvcuvid on this machine: DALI's GPU video decoder (NVDEC) cannot run" >&2
    fi
    ;;
  install)
    dir=${2:?install DIR (the folder where the parts were appended to all.bin)}
    rm -rf "$dir/unpacked" && mkdir -p "$dir/unpacked" && tar xf "$dir/all.bin" -C "$dir/unpacked"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$dir"/unpacked/*.whl
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
      "import nvidia.dali, deepspeed, webdataset, av, soundfile; print('wheels ok: DALI', nvidia.dali.__version__)"
    ;;
  *) echo "usage: $0 download | install DIR" >&2; exit 2 ;;
esac
