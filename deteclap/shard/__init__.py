"""Videos -> WebDataset shards in the format of shards/FORMAT.md (owned by deteclap.format), and
`--verify` of a shard folder: the application `python -m deteclap.shard`.

Per clip: the 10 CAV-MAE frame instants (source frame i * N // 10 of the segment's N frames) as a
VP9 mp4 (every frame a key frame, 1 fps, yuv420p) and the first audio channel resampled to 16 kHz
as 16-bit PCM in a WAV member (`--audio-format pcm`, the default) or FLAC (`flac`). Two stages are
library modules, because `deteclap embed` decodes a video exactly as the writer does:

- `deteclap.inputs`: SRC (folder or manifest) -> planned inputs and failure rows
  (`collect_inputs`, `plan_shards`, REASONS);
- `deteclap.clip`: one clip decoded (`decode_clip`) and encoded into its members (`process_clip`).

The application's own stages, one module each:

- `write`: writing OUT, resumable and deterministic (`write_shards`);
- `verify`: checking a shard folder (`verify_shards`);
- `cli`: the command line (`main`).
"""

from deteclap.clip import (NUM_FRAMES, SAMPLE_RATE, SEEK_MARGIN, SEEK_MIN_START, Clip, ClipFailure, EncodeSettings,
                           Segment, decode_clip, decode_segment, frame_instants, frame_table, process_clip)
from deteclap.inputs import REASONS, ClipInput, ShardError, collect_inputs, plan_shards, read_rows
from deteclap.shard.cli import main
from deteclap.shard.verify import VerifyReport, verify_shards
from deteclap.shard.write import DEFAULT_SAMPLES_PER_SHARD, write_shards

__all__ = [
    "DEFAULT_SAMPLES_PER_SHARD", "NUM_FRAMES", "REASONS", "SAMPLE_RATE", "SEEK_MARGIN", "SEEK_MIN_START", "Clip",
    "ClipFailure", "ClipInput", "EncodeSettings", "Segment", "ShardError", "VerifyReport", "collect_inputs",
    "decode_clip", "decode_segment", "frame_instants", "frame_table", "main", "plan_shards", "process_clip",
    "read_rows", "verify_shards", "write_shards",
]
