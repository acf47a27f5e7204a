"""Training application: CAV-MAE / DETECLAP pretraining (and fine-tuning) with DeepSpeed ZeRO.

    deepspeed deteclap/train.py --config configs/or.json          # any number of GPUs / nodes
    torchrun --nproc-per-node 8 deteclap/train.py --config configs/or.json
    python deteclap/train.py --config configs/tiny.json --set run.max_steps=20   # one process, CPU ok

Writes under `run.out_dir`: config.json (the resolved config), metrics.jsonl (one object per logged
step with `step`, `lr`, `samples_per_s` and every loss term), tb/ (TensorBoard scalars),
checkpoints/step_XXXXXXXX/ (DeepSpeed state + model.pt, a plain state dict) with
checkpoints/latest naming the newest complete one, and summary.json at the end. With
finetune.average_from_step > 0 the model.pt of every checkpoint from that step on is kept and
their mean written to model_wa.pt at the end (CAV-MAE's weight averaging).
`--resume` continues from checkpoints/latest with the same optimiser, lr schedule, step, data
position and random stream, so a killed run resumed reaches the same losses as an uninterrupted one.
A fresh start (no --resume, or nothing to resume) in a folder that holds an earlier run first moves
that run's files (checkpoints/, config.json, metrics.jsonl, tb/, summary.json, model_wa.pt,
eval.json) to RUN/replaced-N/, so the new run neither prunes, averages nor reports them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (deepspeed / torchrun launch a file path)
    _here = str(Path(__file__).resolve().parent)
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(_here)]

import argparse
import itertools
import json
import math
import os
import shutil
import socket
import time
from collections import Counter
from typing import Any
from collections.abc import Iterator

import torch

from deteclap.config import Config, add_config_args, load_config
from deteclap.format import load_dataset_json

LATEST = "latest"
MODEL_FILE = "model.pt"              # plain state dict in every checkpoint folder
AVERAGED_MODEL_FILE = "model_wa.pt"  # finetune.average_from_step > 0: the weight average
SEED_STRIDE = 1_000_003  # keeps per-(run seed, step, rank) random streams apart
FINETUNE_HEAD = "mlp_head"  # the new fine-tuning layer (lr x finetune.head_lr_scale)
# the official pretraining recipes' initialisation (egs/*/run_cavmae_pretrain*.sh: IN-initial.pth)
IMAGENET_INIT_URL = "https://www.dropbox.com/s/9nlz523a5q52w86/ori_mae_11.pth?dl=1"
# what a run leaves in RUN besides checkpoints/ and config.json (eval.json: deteclap/sweep.py)
RUN_OUTPUTS = ("metrics.jsonl", "tb", "summary.json", AVERAGED_MODEL_FILE, "eval.json")


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN / inf; the run stops and keeps its last good checkpoint."""


# ----------------------------------------------------------------------------------------------
# distributed set-up
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed through DeepSpeed; one process without a launcher works too.

    Returns (rank, world_size, device). NCCL on CUDA, gloo on the CPU.
    """
    import deepspeed

    if "RANK" not in os.environ:  # plain `python deteclap/train.py`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    from deteclap.device import pick_device

    use_cuda = pick_device(device_pref).type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device = torch.device("cpu")
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def step_of(tag: str) -> int:
    """The step of a checkpoint folder name (step_00001234 -> 1234)."""
    return int(tag.removeprefix("step_"))


# ----------------------------------------------------------------------------------------------
# the run folder
class RunDir:
    """Paths of one run and its append-only metrics log."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / "metrics.jsonl"

    def latest_tag(self) -> str | None:
        pointer = self.checkpoints / LATEST
        return pointer.read_text().strip() if pointer.is_file() else None

    def set_latest(self, tag: str) -> None:
        tmp = self.checkpoints / f".{LATEST}.tmp"
        tmp.write_text(tag + "\n")
        os.replace(tmp, self.checkpoints / LATEST)

    def set_aside(self) -> Path | None:
        """Move an earlier run's checkpoints, config.json and RUN_OUTPUTS to RUN/replaced-N (the first
        free N), so that a fresh run starts clean and nothing is lost; None when there is none."""
        if not (any(self.checkpoints.glob("step_*")) or (self.checkpoints / LATEST).exists()
                or any((self.root / name).exists() for name in RUN_OUTPUTS)):
            return None
        aside = next(self.root / f"replaced-{n}" for n in itertools.count(1)
                     if not (self.root / f"replaced-{n}").exists())
        aside.mkdir()
        for name in ("checkpoints", "config.json", *RUN_OUTPUTS):
            if (self.root / name).exists():
                (self.root / name).rename(aside / name)
        return aside

    def prune(self, keep: int, keep_models_from: int = 0) -> None:
        """Delete all but the newest `keep` complete checkpoints (never the one `latest` names); of
        those from step `keep_models_from` on (> 0) the model.pt stays, for weight averaging."""
        latest = self.latest_tag()
        tags = sorted(p.name for p in self.checkpoints.glob("step_*") if p.is_dir())
        for tag in tags[:-keep] if keep > 0 else []:
            if tag == latest:
                continue
            if 0 < keep_models_from <= step_of(tag):
                for path in (self.checkpoints / tag).iterdir():
                    if path.name != MODEL_FILE:
                        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
            else:
                shutil.rmtree(self.checkpoints / tag, ignore_errors=True)

    def average_models(self, from_step: int, to_step: float = math.inf) -> dict[str, Any] | None:
        """RUN/model_wa.pt = the mean of the model.pt of every checkpoint from `from_step` on, up to
        `to_step` (the run's final step), as CAV-MAE averages its fine-tuning epochs; None when there
        is none."""
        from deteclap.model.checkpoint import average_state_dicts, save_state_dict

        tags = sorted(p.parent.name for p in self.checkpoints.glob(f"step_*/{MODEL_FILE}")
                      if from_step <= step_of(p.parent.name) <= to_step)
        if not tags:
            return None
        save_state_dict(average_state_dicts([self.checkpoints / t / MODEL_FILE for t in tags]),
                        self.root / AVERAGED_MODEL_FILE)
        return {"path": str(self.root / AVERAGED_MODEL_FILE), "steps": [step_of(t) for t in tags]}

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop logged lines past the checkpoint so the log reads as one run."""
        if not self.metrics.is_file():
            return
        kept = [line for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= after_step]
        self.metrics.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------
# model, data, objective
def load_pretrained(model: torch.nn.Module, pretrained: str) -> None:
    """Load a pretraining checkpoint (model.pt, checkpoint or run folder, official CAV-MAE file) into
    a CAVMAEFT; raise when it leaves encoder weights missing (only the new head may be missing)."""
    from deteclap.model import load_checkpoint
    from deteclap.model.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(pretrained)
    report = load_checkpoint(model, path)
    missing = [k for k in report.missing if not k.startswith(FINETUNE_HEAD)]
    if missing:
        raise RuntimeError(f"{path}: not a pretraining checkpoint of this model shape; missing encoder "
                           f"weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    loaded = len(model.state_dict()) - len(report.missing)
    print(f"fine-tuning from {path}: {loaded} tensors loaded, new head {report.missing}, "
          f"{len(report.unexpected)} unused (decoder / label heads)")


def build_objective(cfg: Config, info: dict[str, Any]) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """The nn.Module DeepSpeed trains (model + loss) and its optimiser parameter groups."""
    from deteclap.model import build_finetune_model, build_model, load_checkpoint
    from deteclap.model.losses import FinetuneObjective, PretrainObjective

    if cfg.finetune.task:
        model = build_finetune_model(cfg.model, len(info["classes"]))
        if cfg.finetune.pretrained:
            load_pretrained(model, cfg.finetune.pretrained)
        objective = FinetuneObjective(model, cfg.finetune.task, cfg.finetune.mode)
        head = [p for n, p in model.named_parameters() if n.startswith(FINETUNE_HEAD)]
        body = [p for n, p in model.named_parameters() if not n.startswith(FINETUNE_HEAD)]
        groups = [{"params": body}, {"params": head, "lr": cfg.optim.lr * cfg.finetune.head_lr_scale}]
        return objective, groups
    from deteclap.data.targets import required_labellers

    if cfg.data.mixup > 0:
        raise ValueError(f"data.mixup={cfg.data.mixup}: mixup is a fine-tuning augmentation (it mixes "
                         f"`classes`, not label-score targets); set finetune.task or data.mixup=0")
    num_labels = len(info["label_vocabulary"]) if required_labellers(cfg.labels) else 0
    model = build_model(cfg.model, num_labels)
    if cfg.model.init_checkpoint:
        if not Path(cfg.model.init_checkpoint).is_file():
            raise FileNotFoundError(
                f"model.init_checkpoint={cfg.model.init_checkpoint}: no such file. CAV-MAE's recipes start "
                f"from its ImageNet-MAE weights: wget '{IMAGENET_INIT_URL}' -O {cfg.model.init_checkpoint} "
                f"(or --set model.init_checkpoint= to start from random weights)")
        print(f"initialised from {cfg.model.init_checkpoint}: {load_checkpoint(model, cfg.model.init_checkpoint)}")
    objective = PretrainObjective(model, cfg.loss)
    return objective, [{"params": [p for p in model.parameters() if p.requires_grad]}]


def training_batches(cfg: Config, rank: int, world: int, epoch: int, skip: int
                     ) -> Iterator[tuple[int, dict[str, Any], Any]]:
    """Endless (epoch, batch, loader); resumes at batch `skip` of `epoch` (`loader.batches_consumed`).

    Each epoch builds the loader for that epoch (its shuffle is seeded by seed and epoch) and
    starts it at batch `skip`, so the batches after a resume are the ones the uninterrupted run saw.
    """
    from deteclap.data import build

    while True:
        loader = build(cfg, train=True, rank=rank, world_size=world, epoch=epoch, start_batch=skip)
        produced = False
        for batch in loader:
            produced = True
            yield epoch, batch, loader
        if not produced and skip == 0:
            raise RuntimeError(f"{cfg.data.train_shards}: the training loader produced no batch "
                               f"(fewer samples than data.batch_size={cfg.data.batch_size} per rank?)")
        skip = 0
        epoch += 1


def resume_state(step: int, epoch: int, loader: Any) -> dict[str, Any]:
    """The checkpoint's data position: every rank's (epoch, batches taken from its loader's source).

    A batch whose every sample was left out is taken but never yielded, so the rank that drops it
    moves on one batch sooner and ranks can stand at different positions. DeepSpeed keeps rank 0's
    client state only: the positions of all ranks are gathered into it (`positions`, by rank)."""
    mine = [epoch, loader.batches_consumed]
    positions: list[Any] = [mine]
    if torch.distributed.is_initialized():
        positions = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(positions, mine)
    return {"step": step, "epoch": epoch, "batch_in_epoch": loader.batches_consumed, "positions": positions}


def data_position(client: dict[str, Any], rank: int, world: int) -> tuple[int, int]:
    """This rank's (epoch, batch in epoch) from a checkpoint's client state (see `resume_state`). A
    checkpoint of another world size splits the data differently: every rank takes rank 0's
    position (the epoch and its progress are kept; which samples come next is not exact)."""
    positions = client.get("positions") or [[client["epoch"], client["batch_in_epoch"]]]
    if len(positions) == world:
        epoch, batch = positions[rank]
        return int(epoch), int(batch)
    if rank == 0:
        print(f"warning: the checkpoint holds the data positions of {len(positions)} rank(s), this run has "
              f"{world}: every rank resumes at rank 0's (epoch {client['epoch']}, batch {client['batch_in_epoch']}), "
              f"which keeps the epoch's progress but not the exact next samples")
    return client["epoch"], client["batch_in_epoch"]


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    """Move tensors (and the targets dict) to the device; cast float inputs for fp16 engines."""
    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            x = x.to(device, non_blocking=True)
            return x.to(dtype) if dtype is not None and x.is_floating_point() else x
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return x
    return {k: move(v) for k, v in batch.items()}


def model_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """A full fp32 state dict of the wrapped model (gathers ZeRO-3 partitions); rank 0 gets it."""
    import deepspeed

    model = engine.module.model
    params = list(model.parameters())
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


def save(engine: Any, run: RunDir, step: int, client_state: dict[str, Any], rank: int, keep: int,
         keep_models_from: int = 0) -> str:
    """Save DeepSpeed state + model.pt under checkpoints/step_N, then point `latest` at it.

    `latest` moves (atomically) only after every rank has finished writing, so a kill while
    saving leaves the previous checkpoint as the one a resume uses.
    """
    from deteclap.model.checkpoint import save_state_dict

    tag = f"step_{step:08d}"
    engine.save_checkpoint(str(run.checkpoints), tag=tag, client_state=client_state, save_latest=False)
    state = model_state_dict(engine)
    if rank == 0:
        save_state_dict(state, run.checkpoints / tag / MODEL_FILE)
    torch.distributed.barrier()
    if rank == 0:
        run.set_latest(tag)
        run.prune(keep, keep_models_from)
    torch.distributed.barrier()
    return tag


def reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar logs over ranks."""
    names = sorted(values)
    t = torch.tensor([values[n] for n in names], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    t /= torch.distributed.get_world_size()
    return dict(zip(names, t.tolist()))


# ----------------------------------------------------------------------------------------------
def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Run training as configured; returns the run summary (also written to summary.json)."""
    import deepspeed

    from deteclap.optim import build_optimizer, build_scheduler, deepspeed_config

    rank, world, device = setup_distributed(cfg.run.device)
    run = RunDir(cfg.run.out_dir)
    if rank == 0:
        tag = run.latest_tag() if resume else None
        if resume and tag is None:
            print(f"--resume: no checkpoint under {run.checkpoints}, starting from step 0")
        aside = run.set_aside() if tag is None else None
        if aside is not None:
            print(f"{run.root} held an earlier run: moved its files to {aside} (--resume continues a run)")
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        (run.root / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    torch.distributed.barrier()  # no rank reads the folder before an earlier run is set aside
    tag = run.latest_tag() if resume else None
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    info = load_dataset_json(cfg.data.train_shards)
    objective, groups = build_objective(cfg, info)
    optimizer = build_optimizer(groups, cfg.optim, device)
    scheduler = build_scheduler(optimizer, cfg.optim)
    engine, _, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg))
    input_dtype = torch.float16 if cfg.deepspeed.precision == "fp16" else None

    average_from = cfg.finetune.average_from_step
    if rank == 0 and average_from > 0 and (average_from % cfg.run.checkpoint_every
                                           or cfg.run.max_steps % cfg.run.checkpoint_every):
        print(f"warning: finetune.average_from_step={average_from} and run.max_steps={cfg.run.max_steps} are not "
              f"multiples of run.checkpoint_every={cfg.run.checkpoint_every}: the weight average gives a partial "
              f"period the weight of a whole one (CAV-MAE averages whole epochs)")
    step, epoch, skip = 0, 0, 0
    if tag is not None:
        _, client = engine.load_checkpoint(str(run.checkpoints), tag=tag)
        if client is None:
            raise RuntimeError(f"{run.checkpoints / tag}: could not load the checkpoint")
        step = client["step"]
        epoch, skip = data_position(client, rank, world)
        if rank == 0:
            run.truncate_metrics(step)
            print(f"resumed from {run.checkpoints / tag} at step {step}")

    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run.root / "tb"))
        except ImportError:
            print("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")

    from tqdm import tqdm

    accum = cfg.deepspeed.grad_accum_steps
    progress = tqdm(total=cfg.run.max_steps, initial=step, disable=rank != 0, unit="step", dynamic_ncols=True)
    batches = training_batches(cfg, rank, world, epoch, skip)
    start_time, last_time, samples_since_log = time.time(), time.time(), 0
    samples_total, last_losses, loader, counted = 0, {}, None, None
    left_out: set[tuple[int, str, str, str]] = set()   # (epoch, shard, key, reason) of skipped samples

    def bank(finished: Any) -> None:   # one loader per epoch; a sample split between ranks counts once
        left_out.update((finished.epoch, s.shard, s.key, s.reason) for s in getattr(finished, "skipped_samples", ()))

    wait_s, busy_s = 0.0, 0.0  # time blocked on the data iterator vs the whole step
    total_wait_s, total_busy_s = 0.0, 0.0
    engine.train()
    while step < cfg.run.max_steps:
        sums: dict[str, float] = {}
        step_start = time.perf_counter()
        for micro in range(accum):
            # one random stream per (seed, step, rank, micro-step): batch augmentation and masking
            # draw the same numbers whether or not the run was resumed
            torch.manual_seed((cfg.run.seed * SEED_STRIDE + step) * world * accum + rank * accum + micro)
            wait_start = time.perf_counter()
            epoch, batch, loader = next(batches)
            wait_s += time.perf_counter() - wait_start
            if loader is not counted:  # a new epoch's loader: bank the finished one's skips
                bank(counted)
                counted = loader
            batch = to_device(batch, engine.device, input_dtype)
            targets = batch["classes"] if cfg.finetune.task else batch["targets"]
            losses = engine(batch["fbank"], batch["frames"], targets)
            finite = torch.tensor(float(torch.isfinite(losses["total"]).item()), device=device)
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if finite.item() == 0:
                terms = {k: float(v.detach()) for k, v in losses.items()}
                raise NonFiniteLoss(f"non-finite loss at step {step + 1} (terms {terms}); stopping. The last good "
                                    f"checkpoint is {run.checkpoints / (run.latest_tag() or 'none')}")
            engine.backward(losses["total"])
            engine.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
            samples_since_log += batch["fbank"].shape[0] * world
            samples_total += batch["fbank"].shape[0] * world
        busy_s += time.perf_counter() - step_start
        step += 1
        progress.update(1)
        if step % cfg.run.log_every == 0 or step == cfg.run.max_steps:
            logged = reduce_mean(sums, device)
            last_losses = logged  # averaged over ranks; the last step is always logged
            now = time.time()
            record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                      "samples_per_s": samples_since_log / max(now - last_time, 1e-9),
                      "data_wait_share": wait_s / max(busy_s, 1e-9), **logged}
            total_wait_s, total_busy_s = total_wait_s + wait_s, total_busy_s + busy_s
            last_time, samples_since_log, wait_s, busy_s = now, 0, 0.0, 0.0
            if rank == 0:
                run.log(record)
                progress.set_postfix(loss=f"{logged['total']:.4f}", sps=f"{record['samples_per_s']:.1f}")
                if writer is not None:
                    for k, v in record.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.max_steps:
            client = resume_state(step, epoch, loader)
            save(engine, run, step, client, rank, cfg.run.keep_checkpoints, cfg.finetune.average_from_step)
    progress.close()
    elapsed = time.time() - start_time
    bank(counted)
    per_rank: list[Any] = [None] * world
    torch.distributed.all_gather_object(per_rank, left_out)
    skipped = Counter(reason for *_, reason in set().union(*per_rank))
    summary = {"steps": step, "samples": samples_total, "seconds": elapsed,
               "samples_per_s": samples_total / max(elapsed, 1e-9), "world_size": world,
               "data_wait_share": total_wait_s / max(total_busy_s, 1e-9),
               "final": {k: v for k, v in last_losses.items() if math.isfinite(v)},
               "checkpoint": str(run.checkpoints / (run.latest_tag() or "")),
               "skipped_samples": dict(skipped)}
    if rank == 0 and cfg.finetune.average_from_step > 0:
        summary["weight_average"] = run.average_models(cfg.finetune.average_from_step, step)
        if summary["weight_average"] is None:
            print(f"warning: no checkpoint at or after finetune.average_from_step={cfg.finetune.average_from_step}: "
                  f"no {AVERAGED_MODEL_FILE} written")
    if rank == 0:
        (run.root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if writer is not None:
            writer.close()
        print(f"done: {step} steps, {summary['samples_per_s']:.1f} samples/s, final loss "
              f"{summary['final'].get('total', float('nan')):.4f}, skipped samples: {summary['skipped_samples'] or 0}; "
              f"checkpoint {summary['checkpoint']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deteclap/train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/latest if it exists")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher (LOCAL_RANK is used)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    try:
        train(cfg, resume=args.resume)
        if torch.distributed.is_initialized():
            # every rank done with its last collective before any rank tears its group down: a 2-rank
            # gloo run once ended with rank 1 aborting at exit ("terminate called without an active
            # exception") after training had finished (tests/test_train.py)
            torch.distributed.barrier()
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
