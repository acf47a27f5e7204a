#!/usr/bin/env bash
# Rehearse docs/GPU.md's device calls on a CPU machine, as far as one allows (no GPU, no NVDEC):
#
#   scripts/rehearse_gpu_plan.sh [PYTHON3.12]     # default: uv's or pyenv's python3.12
#
# 1. the wheels (scripts/device_wheels.sh download, when .wheels/ is missing) and their part sizes;
# 2. a fresh Python 3.12 venv standing in for the GPU machine's Python (numpy, packaging, six and
#    typing-extensions, which that machine has; no torch);
# 3. `carry stage1 0..3` as the calls do (and the FRESH refusal of a part out of order), `install stage1`;
# 4. the DALI operators dali_pipes uses (webdataset reader, CPU video decoder, the KEY.wav read of
#    dali_pipes.pipelines.read_wave, DALI's int16 FLAC decode, pad, crop / normalise, source_info) in a
#    pipeline on synthetic shards of both audio formats, under that Python 3.12;
# 5. `python -m dali_pipes.nvdec` under it: the first call's verdict line ("NVDEC: no (...)" here);
# 6. `carry stage2 0` and `install stage2` (DeepSpeed's import needs torch: checked on the machine).
# Stage 1's tests and benchmark need torch: `OUT=... SITE=/nonexistent CLIPS=16 BATCH=8 CORES=2
# PYTHON=.venv/bin/python scripts/gpu_check.sh stage1` runs them with this project's environment.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py312=${1:-$(command -v python3.12 || ls /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)}
work=${WORK:-/tmp/deteclap-rehearsal}
export SITE=/tmp/site
[ -x "$py312" ] || { echo "no python3.12 (uv python install 3.12, or name one)" >&2; exit 2; }
cd "$here"
[ -f .wheels/stage1/SHA256SUMS ] && [ -f .wheels/stage2/SHA256SUMS ] || scripts/device_wheels.sh download
scripts/device_wheels.sh list
rm -rf "$work" /tmp/wheels "$SITE" && mkdir -p "$work"
"$py312" -m venv "$work/venv" && "$work/venv/bin/pip" install -q numpy packaging six typing-extensions
export PYTHON=$work/venv/bin/python
for n in 0 1 2 3; do scripts/device_wheels.sh carry stage1 "$n"; done
if scripts/device_wheels.sh carry stage1 2 2>/dev/null; then echo "a part out of order was accepted" >&2; exit 1; fi
echo "part out of order refused (FRESH), as after a machine given back"
for n in 0 1 2 3; do scripts/device_wheels.sh carry stage1 "$n" > /dev/null; done
scripts/device_wheels.sh install stage1
"${BUILD_PYTHON:-$here/.venv/bin/python}" -m deteclap.synth "$work/clips" --clips 4 --seconds 2 > /dev/null
for format in pcm flac; do
    "${BUILD_PYTHON:-$here/.venv/bin/python}" -m deteclap.shard "$work/clips" "$work/shards_$format" \
        --samples-per-shard 2 --audio-format "$format" --quiet
done
PYTHONPATH=$SITE "$PYTHON" - "$work" <<'EOF'
import glob, sys
from nvidia.dali import fn, pipeline_def, types

from dali_pipes.pipelines import decode_wave, read_wave   # (imports no torch)

for audio in ("wav", "flac"):
    tars = sorted(glob.glob(f"{sys.argv[1]}/shards_{'pcm' if audio == 'wav' else 'flac'}/train-*.tar"))

    @pipeline_def(batch_size=2, num_threads=2, device_id=None, seed=0, exec_dynamic=True)
    def pipe():
        mp4, sound = fn.readers.webdataset(paths=tars, ext=["mp4", audio], dtypes=[types.UINT8] * 2, name="reader")
        index = fn.constant(idata=[5], dtype=types.INT32, shape=[1])
        frame = fn.element_extract(fn.decoders.video(mp4, device="cpu", frames=index), element_map=[0])
        frame = fn.crop_mirror_normalize(frame, crop=(224, 224), output_layout="CHW", dtype=types.FLOAT)
        wave, length, rate = read_wave(sound)[:3] if audio == "wav" else decode_wave(sound)
        source = fn.pad(fn.get_property(mp4, key="source_info"), fill_value=0)
        return frame, wave, length, rate, source

    p = pipe()
    p.build()
    frames, waves, lengths, rates, _ = p.run()
    print(f"DALI pipeline ({audio}) on Python {sys.version.split()[0]}: frames {frames.as_tensor().shape()}, "
          f"waves {waves.as_tensor().shape()} {waves.as_tensor().dtype}, rates {list(rates.as_array().ravel())}")
EOF
PYTHONPATH=$SITE "$PYTHON" -m dali_pipes.nvdec || echo "(exit $?: the first call would stop here)"
scripts/device_wheels.sh carry stage2 0
scripts/device_wheels.sh install stage2 || echo "(stage2's import check needs torch: run on the GPU machine)"
PYTHONPATH=$SITE "$PYTHON" -c "import hjson, pydantic; print('hjson, pydantic import on 3.12')"
