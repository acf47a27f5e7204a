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
                                  folder_audio_ext, load_dataset_json, save_dataset_json, folder_file)
from deteclap.format.spec import (AUDIO_EXT, AUDIO_EXTS, AUDIO_FORMATS, CLASSES_EXT, FRAME_TABLE_EXT, JSON_FIELDS,
                                  MEMBER_EXTENSIONS, META_EXT, SCORE_DTYPE, SCORE_EXT, VIDEO_EXT, WAV_HEADER_BYTES,
                                  FormatError, audio_ext, check_split, decode_frame_table, decode_wav,
                                  encode_frame_table, encode_wav, frame_table_problem, is_score_member, key_problem,
                                  labeller_of, make_key, member_name, score_member, shard_name, split_member_name,
                                  wav_problem, wav_rate)
from deteclap.format.tario import (LOCK_FILE, folder_lock, iter_tar_samples, list_tars, read_tar_samples,
                                   replace_synced, tmp_path, write_atomic, write_tar)

__all__ = [
    "LOCK_FILE", "ShardScan", "check_split", "entry_problem", "folder_lock", "frame_table_problem", "key_problem",
    "local_shard", "scan_shard", "storage",
    "AUDIO_EXT", "AUDIO_EXTS", "AUDIO_FORMATS", "WAV_HEADER_BYTES", "audio_ext", "decode_wav", "encode_wav",
    "wav_problem", "wav_rate", "CLASSES_EXT", "DATASET_JSON", "DATASET_KEYS", "FORMAT_VERSION", "FRAME_TABLE_EXT",
    "INDEX_SUFFIX",
    "INDEX_VERSION", "JSON_FIELDS", "MEMBER_EXTENSIONS", "META_EXT", "SCORE_DTYPE", "SCORE_EXT", "VIDEO_EXT", "Entry",
    "FormatError", "check_index", "dataset_problems", "decode_frame_table", "encode_frame_table", "folder_file",
    "folder_audio_ext", "index_entries",
    "index_path", "index_sample_count", "index_text", "is_score_member", "iter_tar_samples", "labeller_of",
    "list_tars", "load_dataset_json", "make_key", "member_name", "read_index", "read_tar_samples", "replace_synced",
    "save_dataset_json", "score_member", "shard_name", "split_member_name", "tar_index_samples", "tmp_path",
    "write_atomic", "write_index", "write_tar",
]
