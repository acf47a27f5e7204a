"""deteclap.data.decode on real files: synthetic mp4 clips, FLAC written here, and broken bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from deteclap.data.decode import DecodeError, decode_audio, decode_video_frames


def test_video_frames_all_and_selected(synth_dir):
    data = (synth_dir / "synth_00000.mp4").read_bytes()
    frames = decode_video_frames(data)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
    assert frames.shape[0] == 30                       # 3 s at 10 fps
    picked = decode_video_frames(data, [7, 2, 7])
    np.testing.assert_array_equal(picked, frames[[7, 2, 7]])
    with pytest.raises(DecodeError, match="out of range"):
        decode_video_frames(data, [30])


@pytest.mark.parametrize("data", [b"", b"plain text, not a video\n" * 10])
def test_video_bad_bytes_raise(data):
    with pytest.raises(DecodeError):
        decode_video_frames(data)


def test_video_truncated_raises(synth_dir):
    data = (synth_dir / "synth_00001.mp4").read_bytes()
    with pytest.raises(DecodeError):
        decode_video_frames(data[: len(data) // 3])


def test_audio_first_channel_and_rate():
    rng = np.random.default_rng(0)
    stereo = (rng.uniform(-0.5, 0.5, (1600, 2))).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, stereo, 16000, format="FLAC", subtype="PCM_16")
    wave, rate = decode_audio(buf.getvalue())
    assert rate == 16000 and wave.dtype == np.float32 and wave.shape == (1600,)
    np.testing.assert_allclose(wave, stereo[:, 0], atol=1 / 32767 + 1e-6)   # 16-bit quantisation
    assert np.abs(wave - stereo[:, 1]).max() > 0.1


@pytest.mark.parametrize("data", [b"", b"fLaC" + b"\0" * 20, b"not audio at all" * 8])
def test_audio_bad_bytes_raise(data):
    with pytest.raises(DecodeError):
        decode_audio(data)


def test_frame_table_of_an_mp4_with_several_chunks():
    """FFmpeg starts a new mp4 chunk after 1 MiB, so 10 large key frames (e.g. --no-crop) give a
    sample-to-chunk table of several entries: the frame table, the loader's single-frame decode and
    a full decode agree on every frame."""
    import av
    import struct

    from deteclap.data import mp4
    from deteclap.data.loader import decode_frame
    from deteclap.clip import EncodeSettings, _encode_video, frame_table

    rng = np.random.default_rng(0)        # noise: ~150 kB per VP9 key frame at 432 x 768
    frames = [av.VideoFrame.from_ndarray(rng.integers(0, 256, (432, 768, 3), dtype=np.uint8), format="rgb24")
              for _ in range(10)]
    video, width, height = _encode_video(frames, EncodeSettings(crop=False, short_side=432))
    assert struct.unpack_from(">I", video, mp4._tables(video)[b"stsc"])[0] > 1      # several chunk runs
    samples = mp4.read_samples(video)
    assert len(samples) == 10 and all(s.keyframe for s in samples)
    assert len(frame_table(video, width, height)) > 0
    decoded = decode_video_frames(video)
    for index in (0, 6, 9):
        np.testing.assert_array_equal(decode_frame(video, index), decoded[index])
