#!/usr/bin/env bash
# Bring the wheels the GPU machine lacks (it reaches no package registry) in <= 60 MiB parts.
#
#   scripts/device_wheels.sh download          # here: fetch wheels into .wheels/, split them into parts
#   scripts/device_wheels.sh install DIR       # there, once every part of .wheels/ has been carried
#
# The device tool carries at most 64 MiB per call and releases an idle machine after ~30 s, so carry
# `.wheels/partNN` one per consecutive call, each call appending it to /tmp/wheels/all.bin
# (`cat .wheels/partNN >> /tmp/wheels/all.bin`), then run `install /tmp/wheels` in the last call,
# followed by scripts/gpu_check.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in
  download)
    rm -rf "$here/.wheels" && mkdir -p "$here/.wheels/src"
    # what the GPU machine lacks (it has torch, torchaudio and timm): DALI, DeepSpeed and the data
    # path's own libraries with their small pure-Python dependencies (wheels for this machine's
    # Python and platform: the GPU machine must match them)
    pip download nvidia-dali-cuda130 deepspeed hjson ninja py-cpuinfo msgpack webdataset braceexpand \
      av soundfile --no-deps -d "$here/.wheels/src"
    # one archive of every wheel / sdist, split into parts the device tool can carry
    (cd "$here/.wheels/src" && tar cf ../all.tar .)
    (cd "$here/.wheels" && split -b 60M -d all.tar part && rm all.tar && sha256sum part* > SHA256SUMS)
    ls -la "$here/.wheels"
    ;;
  install)
    dir=${2:?install DIR (the folder where the parts were appended to all.bin)}
    mkdir -p "$dir/unpacked" && tar xf "$dir/all.bin" -C "$dir/unpacked"
    pip install --no-deps --no-index --no-build-isolation "$dir"/unpacked/*
    ;;
  *) echo "usage: $0 download | install DIR" >&2; exit 2 ;;
esac
