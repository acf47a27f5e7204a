"""Loader benchmark: clips/s and MB/s of finished training batches from the same shards.

    python benchmarks/loader.py --shards DIR [DIR2] [--batch 32] [--workers 2] [--threads 8,14] [--batches 24]
                                [--warmup 2] [--repeats 3] [--replicate N] [--json OUT]
                                [--official-layout [--official-dir DIR]] [--profile]

Loaders: `reference` (deteclap.data.loader: PyAV + soundfile + PIL + the fbank in DataLoader
workers), `dali_cpu` (dali_pipes with device_id=None; fbank in the main process), `dali_gpu`
(NVDEC + fbank on the GPU; only when CUDA exists) and, with --official-layout, `official_layout`:
the same clips exported to CAV-MAE's own layout (10 JPEG frames per clip at short side 224 + a
16 kHz wav), read per sample the way its src/dataloader.py does (PIL open + Resize(224, bicubic) /
CenterCrop / ToTensor / Normalize; the wav read with soundfile, as torchaudio.load needs
torchcodec in torchaudio 2.11; then torchaudio.compliance.kaldi.fbank, padding, normalisation,
noise and roll), a random one of the 10 frames, same batch size and workers (written anew here,
not copied). The export stays in --official-dir and is reused while the shards are the same ones
(their fingerprint in its source.json); other shards clear it. Training mode; our loaders use a
shuffle buffer of SHUFFLE_BUFFER samples (see there). Every loader gets the same treatment:
denormals flushed in the main process (as deteclap/train.py does) and in every DataLoader worker
(worker_init_fn); a fresh loader per epoch, as the trainers build them (so epoch starts are inside
the timed batches).

Each loader runs in its own process (spawned, kept for its runs): the reference loader's
DataLoader forks its workers, which must never happen in a process where a DALI GPU pipeline (its
threads, its CUDA context) lives. DALI loaders get DALI CPU threads `--threads` (one result per
count, `dali_gpu_t8`, `dali_gpu_t14`; default: data.dali_threads' default, the cores available).
With several --shards folders (the same clips with `--audio-format pcm` and `flac`), each of our
loaders runs on each of them (`reference@pcm`, `dali_cpu@flac`, ...; `audio_format` in each
result); the official layout is exported from the first.
`--replicate N` reads the shards N times over (hard links to the tars under
.data/replicated beside the --json file, listed in a dataset.json of their own): 1,024 synthetic clips
replicated 4x give the 4,096-sample epochs a batch of 256 needs to be measured past its epoch start.
Each loader is timed `--repeats` times over `--batches` batches after `--warmup` untimed ones
(worker start-up, pipeline build), the loaders taking turns (run 1 of each, then run 2 of each,
...: the shared machine's slow spells hit all of them); the result keeps each loader's median run
and every run's clips/s. `clips_per_s` counts every timed batch, a fresh loader's epoch starts
(start-up, shuffle-buffer fill) included, as a trainer sees them; `steady_clips_per_s` leaves out
each epoch's first batch: the rate a long epoch settles at.
MB/s counts the bytes of the finished fbank + frames tensors; `epoch_first_batch_ms` /
`other_batch_ms` are the mean waits for an epoch's first batch (loader start-up, shuffle-buffer
fill, prefetch) and for the others. `--profile` adds, per loader, the
top own-time costs in ms per batch from cProfile of the same loader run in one process (no
workers: the per-sample work shows; for dali_cpu the DALI threads' work shows as the wait for
the pipeline's outputs). Results: benchmarks/results/loader.json (benchmarks.common schema) and
loader.png; every run also appends one line to benchmarks/results/history.jsonl (benchmarks.common)
for benchmarks/report.py's trend plots.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from deteclap.device import flush_denormals  # noqa: E402

from benchmarks.common import RESULTS_DIR, write_result  # noqa: E402
from deteclap.data.common import resolve_shards  # noqa: E402

MB = 1e6
JPEG_QUALITY = 95
OFFICIAL_FRAMES = 10
OFFICIAL_SOURCE = "source.json"  # in the export folder: the fingerprint of the shards it was made from
PROFILE_TOP = 8                 # costs kept per loader in the JSON `profile` field
PROFILE_BATCHES = 4
# Samples per shuffle buffer. The training default (1000) holds a whole small benchmark set: each
# worker would decode its entire epoch before yielding its first batch, so that the per-sample work
# lands in the warm-up batches; on a real data set the buffer fills once. A buffer of two batches
# spreads the decoding over the epoch as in a long run.
SHUFFLE_BUFFER = 64
EPOCH_START = "_epoch_start"   # benchmark-only marker on the first batch of each epoch


def make_cfg(shards: str, batch: int, workers: int, loader: str, device: str = "auto",
             shuffle_buffer: int = SHUFFLE_BUFFER, threads: int = 0) -> Any:
    from deteclap.config import Config

    cfg = Config()
    cfg.data.shuffle_buffer = shuffle_buffer
    cfg.data.train_shards = shards
    cfg.data.batch_size, cfg.data.num_workers, cfg.data.loader = batch, workers, loader
    cfg.data.dali_device, cfg.data.dali_threads = device, threads
    cfg.labels.variant = "cavmae"
    return cfg


def endless(make: Callable[[int], Iterable[dict]]) -> Iterator[dict]:
    """Batches of epoch 0, 1, ... (a fresh loader per epoch, as the trainer builds them)."""
    epoch = 0
    while True:
        produced = False
        for batch in make(epoch):
            batch[EPOCH_START] = not produced
            produced = True
            yield batch
        if not produced:
            raise RuntimeError("the loader produced no batch (fewer clips than --batch?)")
        epoch += 1


def _mean_ms(seconds: list[float]) -> float | None:
    return round(1000 * sum(seconds) / len(seconds), 1) if seconds else None


def time_run(make: Callable[[], Iterator[dict]], warmup: int, count: int) -> dict[str, Any]:
    """One run: warmup + count batches from a fresh `make()`; clips/s, MB/s and the waits."""
    import torch

    batches = make()
    for _ in range(warmup):
        next(batches)
    clips, nbytes, waits = 0, 0, {True: [], False: []}
    steady_clips = 0
    start = time.perf_counter()
    for _ in range(count):
        before = time.perf_counter()
        batch = next(batches)
        if batch["fbank"].is_cuda:
            torch.cuda.synchronize()
        waits[batch[EPOCH_START]].append(time.perf_counter() - before)
        clips += batch["fbank"].shape[0]
        steady_clips += 0 if batch[EPOCH_START] else batch["fbank"].shape[0]
        nbytes += sum(batch[k].element_size() * batch[k].nelement() for k in ("fbank", "frames"))
    seconds = time.perf_counter() - start
    steady = steady_clips / sum(waits[False]) if waits[False] else None    # the time between batches is ~0
    return {"clips_per_s": clips / seconds, "steady_clips_per_s": steady, "mb_per_s": nbytes / MB / seconds,
            "clips": clips, "seconds": seconds, "epoch_first_batch_ms": _mean_ms(waits[True]),
            "other_batch_ms": _mean_ms(waits[False]), "epoch_starts_timed": len(waits[True])}


def summarise(name: str, runs: list[dict[str, Any]], warmup: int, count: int) -> dict[str, Any]:
    """The median run of a loader (by clips/s), with every run's clips/s."""
    median = sorted(runs, key=lambda r: r["clips_per_s"])[len(runs) // 2]
    result = {"name": name, **median, "batch_ms": 1000 * median["seconds"] / count, "batches_timed": count,
              "warmup_batches": warmup, "runs_clips_per_s": [round(r["clips_per_s"], 1) for r in runs]}
    steady = result["steady_clips_per_s"]
    print(f"{name:>16}: {result['clips_per_s']:8.1f} clips/s  steady {steady or float('nan'):8.1f}  "
          f"{result['mb_per_s']:8.1f} MB/s  ({count} batches, runs {result['runs_clips_per_s']})", flush=True)
    return result


# ----------------------------------------------------------------------------------------------
# CAV-MAE's own layout, read per sample the way its src/dataloader.py does (written here anew)
def shards_fingerprint(tars: list[Path], img_size: int) -> dict[str, Any]:
    """What an export was made from: every tar's resolved path, size and mtime, and the frame size."""
    return {"img_size": img_size,
            "tars": [[str(tar.resolve()), tar.stat().st_size, tar.stat().st_mtime_ns] for tar in tars]}


def export_official_layout(shards: str, out: Path, img_size: int) -> list[str]:
    """Write out/frame_{i}/KEY.jpg (short side img_size) and out/audio/KEY.wav; return the keys.

    out/OFFICIAL_SOURCE records the shards' fingerprint: files of the same fingerprint are reused (a
    resumed export), an export of other shards (synthetic keys repeat between sets) is cleared first.
    """
    import PIL.Image
    import soundfile
    from tqdm import tqdm

    from deteclap.data.decode import decode_audio_member, decode_video_frames
    from deteclap.format import AUDIO_EXTS, iter_tar_samples, sample_audio_ext

    keys = []
    tars = resolve_shards(shards, "train")
    fingerprint = shards_fingerprint(tars, img_size)
    source = out / OFFICIAL_SOURCE
    if not source.is_file() or json.loads(source.read_text()) != fingerprint:
        for folder in ["audio", *(f"frame_{i}" for i in range(OFFICIAL_FRAMES))]:
            shutil.rmtree(out / folder, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        source.write_text(json.dumps(fingerprint, indent=1) + "\n")
    for tar in tqdm(tars, desc="export CAV-MAE layout"):
        for key, members in iter_tar_samples(tar):
            keys.append(key)
            last_frame = out / f"frame_{OFFICIAL_FRAMES - 1}" / f"{key}.jpg"
            if (out / "audio" / f"{key}.wav").is_file() and last_frame.is_file():
                continue                   # exported by an earlier run from the same shards
            frames = decode_video_frames(members["mp4"])
            for i in range(OFFICIAL_FRAMES):
                image = PIL.Image.fromarray(frames[min(i, len(frames) - 1)])
                scale = img_size / min(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)),
                                     PIL.Image.BICUBIC)
                (out / f"frame_{i}").mkdir(parents=True, exist_ok=True)
                image.save(out / f"frame_{i}" / f"{key}.jpg", quality=JPEG_QUALITY)
            audio = sample_audio_ext(members)
            if audio is None:
                raise SystemExit(f"{tar}: sample {key} holds no audio member (.{' / .'.join(AUDIO_EXTS)})")
            wave, rate = decode_audio_member(audio, members[audio])
            (out / "audio").mkdir(parents=True, exist_ok=True)
            soundfile.write(out / "audio" / f"{key}.wav", wave, rate)
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

        import torchvision.transforms as T

        from deteclap.config import FBANK_NORM_MEAN, FBANK_NORM_STD, IMAGE_MEAN, IMAGE_STD

        if self.transform is None:
            self.transform = T.Compose([T.Resize(self.img_size, interpolation=T.InterpolationMode.BICUBIC),
                                        T.CenterCrop(self.img_size), T.ToTensor(),
                                        T.Normalize(mean=IMAGE_MEAN, std=IMAGE_STD)])
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
    """Endless batches of the official-layout loader (a fresh DataLoader per epoch, as CAV-MAE's loop).
    Its libraries are imported here first, as CAV-MAE's dataloader.py imports them at module level:
    the forked workers then do not import them at every epoch start."""
    import PIL.Image  # noqa: F401
    import soundfile  # noqa: F401
    import torch
    import torchaudio  # noqa: F401
    import torchvision.transforms  # noqa: F401

    from deteclap.data.loader import WORKER_START     # forked, as CAV-MAE's workers are on Linux

    dataset = OfficialLayoutDataset(root, keys, cfg.model.img_size, cfg.model.audio_length)
    workers = cfg.data.num_workers

    def epoch(_: int) -> Iterable[dict]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True,
                                             num_workers=workers, drop_last=True,
                                             multiprocessing_context=WORKER_START if workers else None,
                                             worker_init_fn=flush_denormals if workers else None)
        return ({"fbank": fbank, "frames": frames} for fbank, frames in loader)

    return endless(epoch)


# ----------------------------------------------------------------------------------------------
def profile(make: Callable[[], Iterator[dict]], count: int) -> dict[str, Any]:
    """Top own-time costs (cProfile, ms per batch) of `count` batches after one warm-up batch, on one
    torch thread like a DataLoader worker (two threads on a busy 2-core machine measure OpenMP waits)."""
    from deteclap.data.common import single_cpu_thread

    with single_cpu_thread():
        batches = make()
        next(batches)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(count):
            next(batches)
        profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:PROFILE_TOP]
    top = [{"function": f"{Path(file).name}:{line}({func})" if line else func,
            "ms_per_batch": round(1000 * own / count, 1), "calls_per_batch": round(calls / count, 1)}
           for (file, line, func), (_, calls, own, _, _) in rows]
    return {"total_ms_per_batch": round(1000 * stats.total_tt / count, 1), "batches": count, "top": top}


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


def split_name(name: str) -> tuple[str, int]:
    """"dali_gpu_t14" -> ("dali_gpu", 14); a name without a thread count -> (name, 0: the default)."""
    base, _, threads = name.rpartition("_t")
    return (base, int(threads)) if base.startswith("dali") and threads.isdigit() else (name, 0)


def loader_maker(name: str, args: argparse.Namespace, workers: int) -> Callable[[], Iterator[dict]] | None:
    """A function returning endless training batches of loader `name` (a DALI one may end in `_tN`:
    N DALI threads), or None when it cannot run here."""
    import torch

    from deteclap.data import build, dali_available

    name, threads = split_name(name.partition("@")[0])
    if name.startswith("dali") and not dali_available():
        print(f"{name}: skipped (nvidia.dali not importable)")
        return None
    if name == "dali_gpu" and not torch.cuda.is_available():
        print("dali_gpu: skipped (no CUDA device)")
        return None
    if name == "official_layout":
        try:
            import torchaudio  # noqa: F401
        except ImportError:
            print("official_layout: skipped (torchaudio not importable)")
            return None
        cfg = make_cfg(args.shards, args.batch, workers, "reference")
        root = Path(args.official_dir)
        keys = export_official_layout(args.shards, root, cfg.model.img_size)
        return lambda: official_batches(root, keys, cfg)
    cfg = make_cfg(args.shards, args.batch, workers, "reference" if name == "reference" else "dali",
                   device=name.removeprefix("dali_"), threads=threads)
    return lambda: endless(lambda epoch: build(cfg, train=True, epoch=epoch))


def timed_run(name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """One timed run of loader `name` (in a process of its own: see `LoaderProcess`); None: cannot run."""
    flush_denormals()                      # as deteclap/train.py does in its main process
    make = loader_maker(name, args, args.workers)
    return None if make is None else time_run(make, args.warmup, args.batches)


class LoaderProcess:
    """A spawned process that runs one loader's timed runs (kept across them: imports and the
    export are paid once). Spawned, not forked: nothing of the parent's threads or CUDA state."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.args = name, args
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def run(self) -> dict[str, Any] | None:
        return self.pool.submit(timed_run, self.name, self.args).result()

    def close(self) -> None:
        self.pool.shutdown()


def audio_format(folder: str) -> str:
    """`pcm` or `flac`: the audio format of a shard folder's samples (its dataset.json)."""
    from deteclap.format import folder_audio_format, load_dataset_json

    return folder_audio_format(load_dataset_json(folder))


def replicate_shards(shards: str, times: int, out: Path) -> str:
    """A shard folder reading `shards` `times` over: hard links (copies across file systems) to every
    tar and index as `STEM-rK.tar` / `STEM-rK.idx`, and a dataset.json listing them all."""
    from deteclap.format import folder_file, index_path, load_dataset_json, save_dataset_json

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    meta = load_dataset_json(shards)
    rows = []
    for copy in range(times):
        for row in meta.get("shards", []):
            tar = folder_file(shards, row["tar"])
            name = f"{tar.stem}-r{copy}.tar"
            for source, target in ((tar, out / name), (index_path(tar), index_path(out / name))):
                if source.is_file():
                    try:
                        os.link(source, target)
                    except OSError:
                        shutil.copy(source, target)
            rows.append({**row, "tar": name, "index": index_path(out / name).name})
    save_dataset_json(out, {**meta, "shards": rows})
    return str(out)


def add_ratios(results: list[dict[str, Any]]) -> None:
    """`vs_official` and `steady_vs_official` in each result: its clips/s over the official loader's
    in the same run (the loader targets are such ratios; runs on other days or machines differ)."""
    official = next((r for r in results if r["name"] == "official_layout"), None)
    for r in results if official else []:
        r["vs_official"] = round(r["clips_per_s"] / official["clips_per_s"], 3)
        if r.get("steady_clips_per_s") and official.get("steady_clips_per_s"):
            r["steady_vs_official"] = round(r["steady_clips_per_s"] / official["steady_clips_per_s"], 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, nargs="+",
                        help="shard folder(s) (train-*.tar) made by deteclap.shard; several: every loader on each")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--threads", default="",
                        help="comma-separated DALI thread counts, one result each (default: data.dali_threads')")
    parser.add_argument("--replicate", type=int, default=1, help="read the shards this many times over per epoch")
    parser.add_argument("--batches", type=int, default=24, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (start-up)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per loader (the median is kept)")
    parser.add_argument("--json", default=str(RESULTS_DIR / "loader.json"))
    parser.add_argument("--plot", default=str(RESULTS_DIR / "loader.png"))
    parser.add_argument("--loaders", default="reference,dali_cpu,dali_gpu",
                        help="comma-separated subset of reference,dali_cpu,dali_gpu")
    parser.add_argument("--official-layout", action="store_true",
                        help="also time CAV-MAE's per-sample JPEG + wav loader on an export of the clips")
    parser.add_argument("--official-dir", default=str(RESULTS_DIR / ".data" / "official_layout"))
    parser.add_argument("--profile", action="store_true",
                        help="add each loader's top costs (ms per batch, one process) to its result")
    args = parser.parse_args(argv)
    for folder in args.shards:
        if not Path(folder).is_dir():
            parser.error(f"--shards {folder}: not a folder")
    if min(args.batches, args.repeats) < 1 or args.warmup < 0:
        parser.error("--batches and --repeats must be >= 1, --warmup >= 0")

    flush_denormals()                      # as deteclap/train.py does in its main process
    folders = list(args.shards)
    if args.replicate > 1:
        folders = [replicate_shards(folder, args.replicate, Path(args.json).parent / ".data" / f"replicated_{i}")
                   for i, folder in enumerate(folders)]
    formats = [audio_format(folder) for folder in folders]
    threads = [int(t) for t in args.threads.split(",") if t]
    setups: dict[str, argparse.Namespace] = {}      # result name -> the args of its runs (its folder)
    for name in [n for n in args.loaders.split(",") if n] + (["official_layout"] if args.official_layout else []):
        for variant in [f"{name}_t{t}" for t in threads] if name.startswith("dali") and threads else [name]:
            for folder, fmt in zip(folders[:1] if name == "official_layout" else folders, formats):
                label = variant if len(folders) == 1 or name == "official_layout" else f"{variant}@{fmt}"
                setups[label] = argparse.Namespace(**{**vars(args), "shards": folder})
    names = list(setups)
    results = []
    processes = {name: LoaderProcess(name, setups[name]) for name in names}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for _ in range(args.repeats):       # interleaved: a slow spell of the machine hits every loader
            for name, process in processes.items():
                if runs[name] is not None:
                    run = process.run()
                    runs[name] = None if run is None else runs[name] + [run]
    finally:
        for process in processes.values():
            process.close()
    for name in names:
        if runs[name] is None:
            continue                        # could not run here (said why)
        result = summarise(name, runs[name], args.warmup, args.batches)
        if args.profile:                    # in this process: after every timed run, no GPU pipeline alive here
            result["profile"] = profile(loader_maker(name, setups[name], 0), PROFILE_BATCHES)
            print(f"{'':>18}{result['profile']['total_ms_per_batch']:8.1f} ms/batch in all (one process)")
            for row in result["profile"]["top"]:
                print(f"{'':>18}{row['ms_per_batch']:8.1f} ms/batch  {row['function']}")
        results.append(result)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    from deteclap.format import index_sample_count

    for r in results:
        folder = setups[r["name"]].shards
        set_clips = sum(index_sample_count(tar) for tar in resolve_shards(folder, "train"))
        r.update(batch=args.batch, workers=args.workers, set_clips=set_clips,
                 threads=split_name(r["name"].partition("@")[0])[1] or None,
                 audio_format=audio_format(folder),
                 load_average_after=[float(x) for x in load])
    add_ratios(results)
    out = write_result("loader", results, args.json)
    if results:
        plot(results, Path(args.plot))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
