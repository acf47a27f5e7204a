"""Audio labels: MS-CLAP 2023 zero-shot tagging, cosine(audio embedding, prompt embedding) per class.

The prompts "this is a sound of {label}" are embedded ONCE with CLAP's text side and stored in a
.npz table (embeddings [C, D] float32, the vocabulary, the prompt and the identity of the weights
that made it: "random" or the weights file's sha256; other weights recompute it), so labelling
runs only the audio encoder (msclap's `AudioEncoder`: HTSAT + projection). Audio follows msclap's
preprocessing: the 16 kHz shard audio (`KEY.wav` or `KEY.flac`) is resampled to the config's rate (44.1 kHz) as
`torchaudio.transforms.Resample` does, and cut into windows of the config's duration (7 s): a
shorter clip is repeated to fill one window (msclap's rule); a longer one (10 s) gets evenly spaced
windows covering it (msclap would take one random window). A class scores the highest cosine over
the windows, so a sound anywhere in the clip counts.

Offline (tests, no hub): `build_audio_encoder(None)` has random weights, and
`offline_text_encoder()` is msclap's `TextEncoder` around a random `GPT2Model(GPT2Config())`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deteclap.data.decode import DecodeError, decode_audio_member
from deteclap.format import AUDIO_EXTS, sample_audio_ext
from deteclap.labels.store import Sample

NAME = "clap"
PROMPT = "this is a sound of {label}"
CLAP_VERSION = "2023"
AUDIO_PREFIX = "audio_encoder."          # the audio side's keys in the CLAP weights file
TEXT_BATCH = 64
RANDOM_SOURCE = "random"                 # the weights identity of random (offline) weights


def clap_config() -> dict[str, Any]:
    """msclap's own config for CLAP 2023 (sampling_rate, duration, d_proj, ...)."""
    import msclap
    import yaml

    path = Path(msclap.__file__).parent / "configs" / f"config_{CLAP_VERSION}.yml"
    return yaml.safe_load(path.read_text())


def build_audio_encoder(weights: str | Path | None = None, device: str = "cpu") -> Any:
    """msclap's AudioEncoder (HTSAT + projection) in eval mode, from a CLAP 2023 weights file.

    Args:
        weights: CLAP_weights_2023.pth (huggingface.co/microsoft/msclap); None = random weights.
    Raises:
        FileNotFoundError / ValueError: missing file, or a file without the audio encoder's keys.
    """
    import torch
    from msclap.models.clap import AudioEncoder

    cfg = clap_config()
    encoder = AudioEncoder(cfg["audioenc_name"], cfg["out_emb"], cfg["d_proj"], cfg["sampling_rate"],
                           cfg["window_size"], cfg["hop_size"], cfg["mel_bins"], cfg["fmin"], cfg["fmax"],
                           cfg["num_classes"])
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"CLAP weights not found: {weights} (see --help)")
        state = torch.load(weights, map_location="cpu")
        state = state.get("model", state)
        audio_state = {k.removeprefix("module.")[len(AUDIO_PREFIX):]: v for k, v in state.items()
                       if k.removeprefix("module.").startswith(AUDIO_PREFIX)}
        missing = sorted(set(encoder.state_dict()) - set(audio_state))
        if missing:
            raise ValueError(f"{weights}: {len(missing)} audio encoder weights missing (e.g. {missing[:3]}); "
                             "is this a CLAP 2023 file?")
        encoder.load_state_dict(audio_state, strict=False)
    return encoder.eval().to(device)


def offline_text_encoder(gpt2_config: Any = None) -> Any:
    """msclap's TextEncoder (GPT-2 + projection) with random weights, built without the hub.

    msclap's constructor calls `AutoModel.from_pretrained("gpt2")`; this swaps in a random
    `GPT2Model(gpt2_config or GPT2Config())` for that one call and changes nothing else.
    """
    from unittest import mock

    from msclap.models import clap as msclap_clap
    from transformers import GPT2Config, GPT2Model

    config = gpt2_config or GPT2Config()

    class _RandomGPT2:
        @staticmethod
        def from_pretrained(_name: str) -> Any:
            return GPT2Model(config)

    cfg = clap_config()
    with mock.patch.object(msclap_clap, "AutoModel", _RandomGPT2):
        encoder = msclap_clap.TextEncoder(cfg["d_proj"], cfg["text_model"], cfg["transformer_embed_dim"])
    return encoder.eval()


def prompts_for(vocabulary: Sequence[str], prompt: str = PROMPT) -> list[str]:
    return [prompt.format(label=name) for name in vocabulary]


def embed_prompts(text_encoder: Any, tokenize: Callable[[list[str]], dict], prompts: Sequence[str],
                  batch_size: int = TEXT_BATCH) -> np.ndarray:
    """Prompts -> float32 [C, D] with a CLAP text encoder and a tokenizer giving msclap's token dict."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            out.append(text_encoder(tokenize(list(prompts[start:start + batch_size]))).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def byte_tokenize(texts: Sequence[str], text_len: int = 77, vocab_size: int = 50257) -> dict:
    """A stand-in for GPT-2's tokenizer (offline tests only): UTF-8 bytes as token ids, 0-padded.

    Gives msclap's token dict {input_ids, attention_mask} int64 [n, text_len]; msclap's GPT-2 path
    pools the last non-zero id, so ids are shifted to start at 1.
    """
    import torch

    ids = torch.zeros(len(texts), text_len, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [byte % (vocab_size - 1) + 1 for byte in text.encode()][:text_len]
        ids[row, :len(tokens)] = torch.tensor(tokens)
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def offline_text_embeddings(vocabulary: Sequence[str], prompt: str = PROMPT, gpt2_config: Any = None) -> np.ndarray:
    """[C, D] from the random offline text encoder and byte tokens: machinery tests, never real labels."""
    return embed_prompts(offline_text_encoder(gpt2_config), byte_tokenize, prompts_for(vocabulary, prompt))


def clap_text_embeddings(weights: str | Path, vocabulary: Sequence[str], prompt: str = PROMPT,
                         device: str = "cpu") -> np.ndarray:
    """The real text side: msclap's CLAPWrapper (GPT-2 tokenizer + text encoder from the hub) -> [C, D]."""
    from msclap import CLAPWrapper

    wrapper = CLAPWrapper(model_fp=str(weights), version=CLAP_VERSION, use_cuda=device.startswith("cuda"))
    return embed_prompts(wrapper.clap.caption_encoder, wrapper.preprocess_text, prompts_for(vocabulary, prompt))


def weights_identity(weights: str | Path | None) -> str:
    """What made a prompt table: RANDOM_SOURCE for random weights (None), else the file's "sha256:<hex>"."""
    if weights is None:
        return RANDOM_SOURCE
    if not Path(weights).is_file():
        raise FileNotFoundError(f"CLAP weights not found: {weights} (see --help)")
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def text_embeddings_source(path: str | Path) -> str:
    """The weights identity stored in a prompt table ("" for a table saved without one)."""
    with np.load(path, allow_pickle=False) as table:
        return str(table["source"]) if "source" in table.files else ""


def save_text_embeddings(path: str | Path, embeddings: np.ndarray, vocabulary: Sequence[str],
                         prompt: str = PROMPT, source: str = "") -> None:
    """Store a prompt-embedding table (.npz: embeddings [C, D], vocabulary, prompt, source = weights_identity)."""
    if embeddings.shape[0] != len(vocabulary):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(vocabulary)} classes")
    with open(path, "wb") as handle:
        np.savez(handle, embeddings=embeddings.astype(np.float32), vocabulary=np.array(list(vocabulary)),
                 prompt=np.array(prompt), source=np.array(source))


def load_text_embeddings(path: str | Path, vocabulary: Sequence[str], prompt: str = PROMPT) -> np.ndarray:
    """float32 [C, D] from a table saved for exactly this vocabulary and prompt (else ValueError)."""
    with np.load(path, allow_pickle=False) as table:
        stored_vocab, stored_prompt = table["vocabulary"].tolist(), str(table["prompt"])
        embeddings = table["embeddings"]
    if stored_vocab != list(vocabulary):
        raise ValueError(f"{path}: made for another vocabulary ({len(stored_vocab)} classes); recompute it")
    if stored_prompt != prompt:
        raise ValueError(f"{path}: made with prompt {stored_prompt!r}, not {prompt!r}; recompute it")
    return embeddings


def audio_windows(wave: np.ndarray, sample_rate: int, target_rate: int, window_s: float) -> Any:
    """float32 [samples] at sample_rate -> torch float32 [W, window_s * target_rate] windows.

    Resampled like torchaudio.transforms.Resample (msclap's choice); repeated to one window when
    shorter (msclap's rule), else ceil(len / window) evenly spaced windows from start to end.
    """
    import torch
    import torchaudio

    audio = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if sample_rate != target_rate:
        audio = torchaudio.functional.resample(audio, sample_rate, target_rate)
    window = int(window_s * target_rate)
    if audio.numel() == 0:
        raise DecodeError("audio holds no sample")
    if audio.numel() <= window:
        return audio.repeat(math.ceil(window / audio.numel()))[:window].unsqueeze(0)
    count = math.ceil(audio.numel() / window)
    starts = np.linspace(0, audio.numel() - window, count).round().astype(int)
    return torch.stack([audio[s:s + window] for s in starts])


class ClapLabeller:
    """Score clips with CLAP's audio encoder against a stored prompt-embedding table."""

    name = NAME

    def __init__(self, audio_encoder: Any, text_embeddings: np.ndarray, device: str = "cpu"):
        import torch

        cfg = clap_config()
        self.sample_rate, self.window_s = int(cfg["sampling_rate"]), float(cfg["duration"])
        self.device = device
        self.encoder = audio_encoder.to(device).eval()
        text = torch.from_numpy(np.asarray(text_embeddings, np.float32)).to(device)
        self.text = torch.nn.functional.normalize(text, dim=-1)          # [C, D]

    def embed(self, windows: Any) -> Any:
        """torch [N, samples] -> L2-normalised audio embeddings [N, D]."""
        import torch

        with torch.no_grad():
            return torch.nn.functional.normalize(self.encoder(windows.to(self.device))[0].float(), dim=-1)

    def __call__(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[str | None]]:
        """Score a batch -> float32 [n, C] cosines (NaN rows where the audio did not decode), reasons."""
        import torch

        scores = np.full((len(samples), self.text.shape[0]), np.nan, np.float32)
        windows, owner, reasons = [], [], []
        for row, sample in enumerate(samples):
            try:
                ext = sample_audio_ext(sample)
                if ext is None:
                    raise DecodeError(f"no audio member (.{' / .'.join(AUDIO_EXTS)})")
                wave, rate = decode_audio_member(ext, sample[ext])
                clip_windows = audio_windows(wave, rate, self.sample_rate, self.window_s)
            except DecodeError as err:
                reasons.append(f"audio: {err}")
                continue
            windows.append(clip_windows)
            owner.extend([row] * len(clip_windows))
            reasons.append(None)
        if windows:
            cosine = (self.embed(torch.cat(windows)) @ self.text.T).cpu().numpy()   # [N, C]
            owner_arr = np.asarray(owner)
            for row in np.unique(owner_arr):
                scores[row] = cosine[owner_arr == row].max(axis=0)
        return scores, reasons
