"""Loader benchmark: clips/s and MB/s of finished training batches from the same shards.

    python benchmarks/loader.py --shards DIR [--batch 32] [--workers 2] [--batches N] [--json OUT]
                                [--official-layout] [--profile]

Loaders: `reference` (deteclap.data.loader: PyAV + soundfile + PIL in DataLoader workers, batched
torch fbank), `dali_cpu` (dali_pipes with device_id=None), `dali_gpu` (NVDEC + fbank on the GPU;
only when CUDA exists) and, with --official-layout, `official_layout`: the same clips exported to
CAV-MAE's own layout (10 JPEG frames per clip at short side 224 + a 16 kHz wav), read per sample
the way its src/dataloader.py does (PIL open + Resize/CenterCrop/ToTensor/Normalize; the wav read
with soundfile, as torchaudio.load needs torchcodec in torchaudio 2.11; then
torchaudio.compliance.kaldi.fbank, padding, normalisation, noise), same batch size and workers.
Training mode (random frame, noise). The first `--warmup` batches (worker start-up, pipeline
build) are excluded. MB/s counts the bytes of the finished fbank + frames tensors. Results:
benchmarks/results/loader.json (benchmarks.common schema) and loader.png; --profile prints a
cProfile summary of the reference and dali_cpu paths (main process only).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS_DIR, write_result  # noqa: E402

MB = 1e6
JPEG_QUALITY = 95
OFFICIAL_FRAMES = 10
PROFILE_LINES = 12


def make_cfg(shards: str, batch: int, workers: int, loader: str, device: str = "auto") -> Any:
    from deteclap.config import Config

    cfg = Config()
    cfg.data.train_shards = shards
    cfg.data.batch_size, cfg.data.num_workers, cfg.data.loader = batch, workers, loader
    cfg.data.dali_device = device
    cfg.labels.variant = "cavmae"
    return cfg


def endless(make: Callable[[int], Iterable[dict]]) -> Iterator[dict]:
    """Batches of epoch 0, 1, ... (a fresh loader per epoch, as the trainer builds them)."""
    epoch = 0
    while True:
        produced = False
        for batch in make(epoch):
            produced = True
            yield batch
        if not produced:
            raise RuntimeError("the loader produced no batch (fewer clips than --batch?)")
        epoch += 1


def time_loader(name: str, batches: Iterator[dict], warmup: int, count: int) -> dict[str, Any]:
    """Consume warmup + count batches; clips/s and MB/s over the timed ones."""
    import torch

    for _ in range(warmup):
        next(batches)
    clips, nbytes = 0, 0
    start = time.perf_counter()
    for _ in range(count):
        batch = next(batches)
        if batch["fbank"].is_cuda:
            torch.cuda.synchronize()
        clips += batch["fbank"].shape[0]
        nbytes += sum(batch[k].element_size() * batch[k].nelement() for k in ("fbank", "frames"))
    seconds = time.perf_counter() - start
    result = {"name": name, "clips_per_s": clips / seconds, "mb_per_s": nbytes / MB / seconds,
              "clips": clips, "seconds": seconds}
    print(f"{name:>16}: {result['clips_per_s']:8.1f} clips/s  {result['mb_per_s']:8.1f} MB/s  "
          f"({clips} clips in {seconds:.2f} s)", flush=True)
    return result


# ----------------------------------------------------------------------------------------------
# CAV-MAE's own layout, read per sample the way its src/dataloader.py does (written here anew)
def export_official_layout(shards: str, out: Path, img_size: int) -> list[str]:
    """Write out/frame_{i}/KEY.jpg (short side img_size) and out/audio/KEY.wav; return the keys."""
    import PIL.Image
    import soundfile
    from tqdm import tqdm

    from deteclap.data.decode import decode_audio, decode_video_frames
    from deteclap.data.loader import iter_tar_samples, resolve_shards

    keys = []
    tars = resolve_shards(shards, "train")
    for tar in tqdm(tars, desc="export CAV-MAE layout"):
        for key, members in iter_tar_samples(tar):
            frames = decode_video_frames(members["mp4"])
            for i in range(OFFICIAL_FRAMES):
                image = PIL.Image.fromarray(frames[min(i, len(frames) - 1)])
                scale = img_size / min(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)),
                                     PIL.Image.BICUBIC)
                (out / f"frame_{i}").mkdir(parents=True, exist_ok=True)
                image.save(out / f"frame_{i}" / f"{key}.jpg", quality=JPEG_QUALITY)
            wave, rate = decode_audio(members["flac"])
            (out / "audio").mkdir(parents=True, exist_ok=True)
            soundfile.write(out / "audio" / f"{key}.wav", wave, rate)
            keys.append(key)
    return keys


class OfficialLayoutDataset:
    """Per-sample JPEG + wav loading and per-sample torchaudio fbank (CAV-MAE's recipe)."""

    def __init__(self, root: Path, keys: list[str], img_size: int, target_length: int) -> None:
        self.root, self.keys, self.img_size, self.target_length = root, keys, img_size, target_length
        self.transform = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        import random

        import numpy as np
        import PIL.Image
        import soundfile
        import torch
        import torchaudio

        from deteclap.config import FBANK_NORM_MEAN, FBANK_NORM_STD
        from deteclap.data.loader import frame_transform

        if self.transform is None:
            self.transform = frame_transform(self.img_size)
        key = self.keys[index]
        # torchaudio.load needs torchcodec in torchaudio 2.11; soundfile returns the same samples
        wave, rate = soundfile.read(str(self.root / "audio" / f"{key}.wav"), dtype="float32", always_2d=True)
        waveform = torch.from_numpy(wave.T.copy())
        waveform = waveform - waveform.mean()
        fbank = torchaudio.compliance.kaldi.fbank(
            waveform, htk_compat=True, sample_frequency=rate, use_energy=False, window_type="hanning",
            num_mel_bins=128, dither=0.0, frame_shift=10)
        pad = self.target_length - fbank.shape[0]
        fbank = torch.nn.ZeroPad2d((0, 0, 0, pad))(fbank) if pad > 0 else fbank[: self.target_length]
        fbank = (fbank - FBANK_NORM_MEAN) / FBANK_NORM_STD
        fbank = fbank + torch.rand(fbank.shape[0], fbank.shape[1]) * np.random.rand() / 10
        fbank = torch.roll(fbank, np.random.randint(-self.target_length, self.target_length), 0)
        frame = random.randint(0, OFFICIAL_FRAMES - 1)
        image = PIL.Image.open(self.root / f"frame_{frame}" / f"{key}.jpg").convert("RGB")
        return fbank, self.transform(image)


def official_batches(root: Path, keys: list[str], cfg: Any) -> Iterator[dict]:
    import torch

    dataset = OfficialLayoutDataset(root, keys, cfg.model.img_size, cfg.model.audio_length)

    def epoch(_: int) -> Iterable[dict]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True,
                                             num_workers=cfg.data.num_workers, drop_last=True)
        return ({"fbank": fbank, "frames": frames} for fbank, frames in loader)

    return endless(epoch)


# ----------------------------------------------------------------------------------------------
def profile(name: str, batches: Iterator[dict], count: int) -> str:
    """cProfile of `count` batches (main process), top functions by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        next(batches)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(PROFILE_LINES)
    return f"== profile {name} ({count} batches, sorted by own time)\n{text.getvalue()}"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["name"] for r in results]
    values = [r["clips_per_s"] for r in results]
    ax.barh(names, values, color="tab:blue")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.0f}", va="center")
    ax.set_xlabel("clips / s (finished training batches)")
    ax.set_title("Loader throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="shard folder (train-*.tar) made by deteclap.shard")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per loader")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    parser.add_argument("--json", default=str(RESULTS_DIR / "loader.json"))
    parser.add_argument("--plot", default=str(RESULTS_DIR / "loader.png"))
    parser.add_argument("--loaders", default="reference,dali_cpu,dali_gpu",
                        help="comma-separated subset of reference,dali_cpu,dali_gpu")
    parser.add_argument("--official-layout", action="store_true",
                        help="also time CAV-MAE's per-sample JPEG + wav loader on an export of the clips")
    parser.add_argument("--official-dir", default=str(RESULTS_DIR / ".data" / "official_layout"))
    parser.add_argument("--profile", action="store_true", help="print a cProfile of reference and dali_cpu")
    args = parser.parse_args(argv)
    if not Path(args.shards).is_dir():
        parser.error(f"--shards {args.shards}: not a folder")

    import torch

    from deteclap.data import build, dali_available

    wanted = [n for n in args.loaders.split(",") if n]
    results = []
    for name in wanted:
        if name.startswith("dali") and not dali_available():
            print(f"{name}: skipped (nvidia.dali not importable)")
            continue
        if name == "dali_gpu" and not torch.cuda.is_available():
            print("dali_gpu: skipped (no CUDA device)")
            continue
        loader = "reference" if name == "reference" else "dali"
        cfg = make_cfg(args.shards, args.batch, args.workers, loader, device=name.removeprefix("dali_"))
        make = (lambda c: lambda epoch: build(c, train=True, epoch=epoch))(cfg)
        results.append(time_loader(name, endless(make), args.warmup, args.batches))
        if args.profile and name in ("reference", "dali_cpu"):
            print(profile(name, endless(make), args.batches))
    if args.official_layout:
        try:
            import torchaudio  # noqa: F401
        except ImportError:
            print("official_layout: skipped (torchaudio not importable)")
        else:
            cfg = make_cfg(args.shards, args.batch, args.workers, "reference")
            root = Path(args.official_dir)
            keys = export_official_layout(args.shards, root, cfg.model.img_size)
            results.append(time_loader("official_layout", official_batches(root, keys, cfg),
                                       args.warmup, args.batches))
    for r in results:
        r.update(batch=args.batch, workers=args.workers)
    out = write_result("loader", results, args.json)
    if results:
        plot(results, Path(args.plot))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
