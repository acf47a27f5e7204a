"""The shard format (shards/FORMAT.md): the one owner of its rules, imported by every reader and writer.

- `spec`: member names and the key rule (`split_member_name`), extensions (score members
  `KEY.<labeller>.f16` included), the audio formats (`KEY.flac`, or `KEY.wav`: `encode_wav` /
  `decode_wav` / `wav_problem`), shard names, the `KEY.frames` frame table, sample JSON fields.
- `index`: DALI's wds2idx index (v1.2): one writer (`write_index`), one reader (`read_index`),
  and `check_index`, which compares an index with the tar beside it.
- `meta`: `dataset.json`: one reader (`load_dataset_json`), one writer (`save_dataset_json`), the
  schema (`DATASET_KEYS`, `FORMAT_VERSION`, `dataset_problems`), the one resolver of its `tar` /
  `index` entries (`folder_file`: never outside the folder).
- `tario`: a tar's samples (`read_tar_samples`, `iter_tar_samples`), writing a tar of samples
  (`write_tar`), a folder's tars (`list_tars`), atomic, fsynced writes (`write_atomic`) and the
  lock of a folder a job changes (`folder_lock`).
- `index` also holds `scan_shard`: a tar's samples from its headers, checked against damage, bad
  keys and its index (what the loaders and the labeller read before they trust a tar), and
  `local_shard`: a shard in object storage as local files.

- `storage`: where files live, local paths or fsspec URLs (`s3://`, `gs://`, `http(s)://`): every
  function above reads and writes through it, so a shard folder may sit in object storage.

This package imports nothing else of deteclap, so every layer above it can use it.
"""

from deteclap.format.index import (INDEX_SUFFIX, INDEX_VERSION, Entry, ShardScan, check_index, index_entries,
                                   index_path, index_sample_count, index_text, local_shard, read_index, scan_shard,
                                   tar_index_samples, write_index)
from deteclap.format.meta import (DATASET_JSON, DATASET_KEYS, FORMAT_VERSION, dataset_problems, entry_problem,
                                  folder_audio_ext, folder_audio_format, load_dataset_json, save_dataset_json,
                                  folder_file)
from deteclap.format.spec import (AUDIO_EXT, AUDIO_EXTS, AUDIO_FORMATS, CLASSES_EXT, FRAME_TABLE_EXT, JSON_FIELDS,
                                  LEGACY_AUDIO_FORMAT,
                                  MEMBER_EXTENSIONS, META_EXT, PCM_SCALE, SCORE_DTYPE, SCORE_EXT, VIDEO_EXT, WAV_EXT,
                                  WAV_HEADER_BYTES, WAV_RATE_OFFSET,
                                  FormatError, audio_ext, check_split, decode_frame_table, decode_wav,
                                  encode_frame_table, encode_wav, frame_table_problem, is_score_member, key_problem,
                                  labeller_of, make_key, member_name, sample_audio_ext, score_member, shard_name,
                                  split_member_name, wav_problem, wav_rate)
from deteclap.format.tario import (LOCK_FILE, folder_lock, iter_tar_samples, list_tars, read_tar_samples,
                                   replace_synced, tmp_path, write_atomic, write_tar)

__all__ = [
    "AUDIO_EXT", "AUDIO_EXTS", "AUDIO_FORMATS", "CLASSES_EXT", "DATASET_JSON", "DATASET_KEYS", "FORMAT_VERSION",
    "FRAME_TABLE_EXT", "INDEX_SUFFIX", "INDEX_VERSION", "JSON_FIELDS", "LEGACY_AUDIO_FORMAT", "LOCK_FILE",
    "MEMBER_EXTENSIONS", "META_EXT", "PCM_SCALE", "SCORE_DTYPE", "SCORE_EXT", "VIDEO_EXT", "WAV_EXT",
    "WAV_HEADER_BYTES", "WAV_RATE_OFFSET", "audio_ext", "check_index", "check_split", "dataset_problems",
    "decode_frame_table", "decode_wav", "encode_frame_table", "encode_wav", "Entry", "entry_problem",
    "folder_audio_ext", "folder_audio_format", "folder_file", "folder_lock", "FormatError", "frame_table_problem",
    "index_entries", "index_path", "index_sample_count", "index_text", "is_score_member", "iter_tar_samples",
    "key_problem", "labeller_of", "list_tars", "load_dataset_json", "local_shard", "make_key", "member_name",
    "read_index", "read_tar_samples", "replace_synced", "sample_audio_ext", "save_dataset_json", "scan_shard",
    "score_member", "shard_name", "ShardScan", "split_member_name", "storage", "tar_index_samples", "tmp_path",
    "wav_problem", "wav_rate", "write_atomic", "write_index", "write_tar",
]
