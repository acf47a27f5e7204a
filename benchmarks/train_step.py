"""Train-step benchmark: samples/s, peak memory and model FLOPs utilisation per ZeRO stage.

    python benchmarks/train_step.py [--model full|tiny] [--stages 0,1,2,3] [--batch N] [--steps N]

Times the real DeepSpeed engine over `PretrainObjective` (DETECLAP OR: both label heads on) on
random inputs of the model's shapes, so it measures the model and optimiser, not the loader. Each
stage runs in its own process so that peak memory is per stage. FLOPs per step are counted once by
`torch.utils.flop_counter.FlopCounterMode` on a forward + backward; MFU = achieved FLOP/s / the
device's peak (H100 SXM dense bf16: 989 TFLOP/s; no peak is assumed for CPUs, so MFU is null there).
Defaults: the full model on a GPU, the tiny config on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NUM_LABELS = 601  # Open Images V7 classes
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)


def run_stage(model_name: str, stage: int, batch: int, steps: int, warmup: int, precision: str) -> dict:
    """One ZeRO stage in this process: returns the measured numbers."""
    import torch

    from deteclap.config import load_config
    from deteclap.model import build_model
    from deteclap.model.losses import PretrainObjective
    from deteclap.optim import build_optimizer, build_scheduler, deepspeed_config
    from deteclap.train import setup_distributed

    config = REPO / "configs" / ("tiny.json" if model_name == "tiny" else "or.json")
    cfg = load_config(config, [f"deepspeed.zero_stage={stage}", f"data.batch_size={batch}",
                               f"deepspeed.precision={precision}", "optim.warmup_steps=1"])
    rank, world, device = setup_distributed("auto")
    import deepspeed

    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_LABELS)
    parameters = sum(p.numel() for p in model.parameters())   # before ZeRO-3 partitions them (numel 0)
    objective = PretrainObjective(model, cfg.loss)
    optimizer = build_optimizer([{"params": list(model.parameters())}], cfg.optim, device)
    engine, _, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer,
                                           lr_scheduler=build_scheduler(optimizer, cfg.optim),
                                           config=deepspeed_config(cfg))
    m = cfg.model
    fbank = torch.randn(batch, m.audio_length, m.num_mel_bins, device=device)
    frames = torch.randn(batch, 3, m.img_size, m.img_size, device=device)
    targets = {k: (torch.rand(batch, NUM_LABELS, device=device) > 0.99).float() for k in ("a2l", "v2l")}

    def step() -> None:
        losses = engine(fbank, frames, targets)
        engine.backward(losses["total"])
        engine.step()

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()  # forward + backward; the optimiser step's FLOPs are negligible and not counted
    flops_per_step = counter.get_total_flops()
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    achieved = flops_per_step * steps / seconds
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = peak_flops(name) if device.type == "cuda" else None
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process max RSS
    return {"name": f"{model_name}_zero{stage}_{precision}", "model": model_name, "zero_stage": stage,
            "precision": precision, "batch": batch, "world_size": world, "device": name,
            "parameters": parameters,
            "samples_per_s": batch * world * steps / seconds, "step_ms": 1000 * seconds / steps,
            "flops_per_step": flops_per_step, "achieved_tflops": achieved / 1e12,
            "mfu": None if peak is None else achieved / peak,
            "peak_memory_gib": peak_mem, "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "max_rss"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("full", "tiny"), default=None, help="default: full on GPU, tiny on CPU")
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--batch", type=int, default=None, help="default: 48 (full), 16 (tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 GPU, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--json", default=None, help="default: benchmarks/results/train_step.json")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    model = args.model or ("full" if gpu else "tiny")
    batch = args.batch or (48 if model == "full" else 16)
    steps = args.steps or (20 if gpu else 5)
    if args.worker is not None:  # child process: one stage, result as JSON on the last line
        print(json.dumps(run_stage(model, args.worker, batch, steps, args.warmup, args.precision)))
        return 0
    results = []
    for stage in [int(s) for s in args.stages.split(",")]:
        cmd = [sys.executable, __file__, "--worker", str(stage), "--model", model, "--batch", str(batch),
               "--steps", str(steps), "--warmup", str(args.warmup), "--precision", args.precision]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            results.append({"name": f"{model}_zero{stage}_{args.precision}", "error": proc.stderr[-500:]})
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        mfu = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
        print(f"{result['name']}: {result['samples_per_s']:.1f} samples/s, {result['step_ms']:.0f} ms/step, "
              f"{result['achieved_tflops']:.2f} TFLOP/s, MFU {mfu}, peak memory {result['peak_memory_gib']:.2f} GiB")
        results.append(result)
    from benchmarks.common import write_result

    path = write_result("train_step", results, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
