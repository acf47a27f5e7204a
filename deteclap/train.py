"""Training application: CAV-MAE / DETECLAP pretraining (and fine-tuning) with DeepSpeed ZeRO.

    deepspeed deteclap/train.py --config configs/or.json          # any number of GPUs / nodes
    torchrun --nproc-per-node 8 deteclap/train.py --config configs/or.json
    python deteclap/train.py --config configs/tiny.json --set run.max_steps=20   # one process, CPU ok
    python -m deteclap.train --config configs/tiny.json                            # the same

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
The folder's layout and the checks before a resume live in deteclap.run. A resume stops with a
message (exit 2) when `latest` names no complete checkpoint or metrics.jsonl is damaged before its
last line; it drops a torn last line of metrics.jsonl (a kill while logging a step that was never
checkpointed), checkpoint folders newer than `latest` (saves cut short) and orphan temporary files.

The steps: setup_distributed, prepare_run_folder, build_engine, restore, then train_step per step
(with Meters, StepLog and save), and write_summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (deepspeed / torchrun launch a file path)
    _here = str(Path(__file__).resolve().parent)
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(_here)]

import argparse
import json
import math
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterator

import torch

from deteclap.config import Config, ConfigError, add_config_args, load_config
from deteclap.format import load_dataset_json
from deteclap.run import (AVERAGED_MODEL_FILE, CONFIG_FILE, MODEL_FILE, SUMMARY_FILE, RunDir, RunFolderError,
                          step_of, tag_of)

SEED_STRIDE = 1_000_003  # keeps per-(run seed, step, rank) random streams apart
FINETUNE_HEAD = "mlp_head"  # the new fine-tuning layer (lr x finetune.head_lr_scale)
# the official pretraining recipes' initialisation (egs/*/run_cavmae_pretrain*.sh: IN-initial.pth)
IMAGENET_INIT_URL = "https://www.dropbox.com/s/9nlz523a5q52w86/ori_mae_11.pth?dl=1"
ERROR_EXIT = 2          # a config or run folder that cannot be used as it is
NON_FINITE_EXIT = 3     # a loss term became NaN / inf


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

    tag = tag_of(step)
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
# the steps of a run
@dataclass
class Position:
    """Where a run stands: optimiser steps done, and this rank's data position (see `resume_state`)."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def prepare_run_folder(run: RunDir, cfg: Config, rank: int, resume: bool) -> str | None:
    """Make RUN ready; return the checkpoint tag to resume from (None: a fresh start).

    Every rank first checks what a resume needs (`latest` names a complete checkpoint, the metrics
    log is readable), so a bad folder stops all ranks alike before anything in it changes. Rank 0
    then removes what a kill left behind (orphan temporary files; on resume, checkpoint folders newer
    than `latest`, which the resumed run writes again), moves an earlier run aside on a fresh start
    and writes config.json.
    """
    tag = run.resume_tag() if resume else None
    if tag is not None:
        run.read_metrics()
    if rank == 0:
        for path in run.remove_orphan_tmp():
            print(f"removed {path}: a temporary file left by an interrupted write")
        if resume and tag is None:
            print(f"--resume: no checkpoint under {run.checkpoints}, starting from step 0")
        if tag is None:
            aside = run.set_aside()
            if aside is not None:
                print(f"{run.root} held an earlier run: moved its files to {aside} (--resume continues a run)")
        else:
            for newer in run.remove_after(step_of(tag)):
                print(f"removed {run.checkpoints / newer}: newer than {tag}, which `latest` names (a save cut "
                      f"short); the resumed run writes it again")
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        (run.root / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    torch.distributed.barrier()  # no rank reads the folder before an earlier run is set aside
    return tag


def build_engine(cfg: Config, device: torch.device) -> tuple[Any, Any]:
    """The DeepSpeed engine over the objective, with its optimiser and lr schedule; (engine, scheduler)."""
    import deepspeed

    from deteclap.optim import build_optimizer, build_scheduler, deepspeed_config

    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    info = load_dataset_json(cfg.data.train_shards)
    objective, groups = build_objective(cfg, info)
    optimizer = build_optimizer(groups, cfg.optim, device)
    scheduler = build_scheduler(optimizer, cfg.optim)
    engine, _, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg))
    return engine, scheduler


def warn_partial_average_period(cfg: Config) -> None:
    average_from, every = cfg.finetune.average_from_step, cfg.run.checkpoint_every
    if average_from > 0 and (average_from % every or cfg.run.max_steps % every):
        print(f"warning: finetune.average_from_step={average_from} and run.max_steps={cfg.run.max_steps} are not "
              f"multiples of run.checkpoint_every={every}: the weight average gives a partial "
              f"period the weight of a whole one (CAV-MAE averages whole epochs)")


def restore(engine: Any, run: RunDir, tag: str, rank: int, world: int) -> Position:
    """Load checkpoint `tag` (model, optimiser, lr schedule) and return the position it was saved at;
    rank 0 cuts the metrics log back to that step."""
    _, client = engine.load_checkpoint(str(run.checkpoints), tag=tag)
    if client is None:
        raise RunFolderError(f"{run.checkpoints / tag}: DeepSpeed could not load the checkpoint")
    epoch, batch = data_position(client, rank, world)
    position = Position(client["step"], epoch, batch)
    if rank == 0:
        torn = run.truncate_metrics(position.step)
        if torn is not None:
            print(f"{run.metrics}: dropped its torn last line {torn[:60]!r} (a kill while logging a step "
                  f"after the checkpoint; the resumed run logs that step again)")
        print(f"resumed from {run.checkpoints / tag} at step {position.step}")
    return position


class Meters:
    """Throughput, the share of time spent waiting for data, and the samples the loaders left out."""

    def __init__(self, world: int):
        self.world = world
        self.start = self.last_log = time.time()
        self.samples = self.samples_since_log = 0
        self.wait_s = self.busy_s = 0.0               # since the last log: blocked on the data iterator / whole steps
        self.total_wait_s = self.total_busy_s = 0.0
        self.left_out: set[tuple[int, str, str, str]] = set()   # (epoch, shard, key, reason) of skipped samples
        self.loader: Any = None

    def count_loader(self, loader: Any) -> None:
        """Called with each batch's loader: a new epoch's loader banks the finished one's skips."""
        if loader is not self.loader:
            self.bank()
            self.loader = loader

    def bank(self) -> None:   # one loader per epoch; a sample split between ranks counts once
        self.left_out.update((self.loader.epoch, s.shard, s.key, s.reason)
                             for s in getattr(self.loader, "skipped_samples", ()))

    def count_batch(self, batch_size: int) -> None:
        self.samples_since_log += batch_size * self.world
        self.samples += batch_size * self.world

    def interval(self) -> dict[str, float]:
        """samples_per_s and data_wait_share since the last call (one logging interval)."""
        now = time.time()
        out = {"samples_per_s": self.samples_since_log / max(now - self.last_log, 1e-9),
               "data_wait_share": self.wait_s / max(self.busy_s, 1e-9)}
        self.total_wait_s, self.total_busy_s = self.total_wait_s + self.wait_s, self.total_busy_s + self.busy_s
        self.last_log, self.samples_since_log, self.wait_s, self.busy_s = now, 0, 0.0, 0.0
        return out

    def totals(self) -> dict[str, Any]:
        """The whole run's numbers, skipped samples counted over every rank (a collective call)."""
        elapsed = time.time() - self.start
        self.bank()
        per_rank: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(per_rank, self.left_out)
        return {"samples": self.samples, "seconds": elapsed, "samples_per_s": self.samples / max(elapsed, 1e-9),
                "world_size": self.world, "data_wait_share": self.total_wait_s / max(self.total_busy_s, 1e-9),
                "skipped_samples": dict(Counter(reason for *_, reason in set().union(*per_rank)))}


def train_step(engine: Any, batches: Iterator[tuple[int, dict[str, Any], Any]], cfg: Config, position: Position,
               rank: int, world: int, meters: Meters, run: RunDir) -> tuple[dict[str, float], Any]:
    """One optimiser step over grad_accum_steps micro-batches; returns (loss terms averaged over the
    micro-batches on this rank, the loader of the last batch). Raises NonFiniteLoss when any rank's
    loss is NaN / inf, before the step is applied."""
    accum = cfg.deepspeed.grad_accum_steps
    input_dtype = torch.float16 if cfg.deepspeed.precision == "fp16" else None
    sums: dict[str, float] = {}
    step_start = time.perf_counter()
    loader = None
    for micro in range(accum):
        # one random stream per (seed, step, rank, micro-step): batch augmentation and masking
        # draw the same numbers whether or not the run was resumed
        torch.manual_seed((cfg.run.seed * SEED_STRIDE + position.step) * world * accum + rank * accum + micro)
        wait_start = time.perf_counter()
        position.epoch, batch, loader = next(batches)
        meters.wait_s += time.perf_counter() - wait_start
        meters.count_loader(loader)
        batch = to_device(batch, engine.device, input_dtype)
        targets = batch["classes"] if cfg.finetune.task else batch["targets"]
        losses = engine(batch["fbank"], batch["frames"], targets)
        finite = torch.tensor(float(torch.isfinite(losses["total"]).item()), device=engine.device)
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() == 0:
            terms = {k: float(v.detach()) for k, v in losses.items()}
            raise NonFiniteLoss(f"non-finite loss at step {position.step + 1} (terms {terms}); stopping. The last "
                                f"good checkpoint is {run.checkpoints / (run.latest_tag() or 'none')}")
        engine.backward(losses["total"])
        engine.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
        meters.count_batch(batch["fbank"].shape[0])
    meters.busy_s += time.perf_counter() - step_start
    return sums, loader


class StepLog:
    """Rank 0's outputs of logged steps: metrics.jsonl, TensorBoard scalars and the progress bar."""

    def __init__(self, run: RunDir, max_steps: int, first_step: int, rank: int):
        from tqdm import tqdm

        self.run, self.rank, self.writer = run, rank, None
        if rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(run.root / "tb"))
            except ImportError:
                print("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")
        self.progress = tqdm(total=max_steps, initial=first_step, disable=rank != 0, unit="step", dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.run.log(record)
        self.progress.set_postfix(loss=f"{record['total']:.4f}", sps=f"{record['samples_per_s']:.1f}")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_summary(cfg: Config, run: RunDir, step: int, meters: Meters, last_losses: dict[str, float],
                  rank: int) -> dict[str, Any]:
    """The run summary (every rank computes it; rank 0 writes summary.json and the weight average)."""
    totals = meters.totals()
    summary = {"steps": step, **{k: v for k, v in totals.items() if k != "skipped_samples"},
               "final": {k: v for k, v in last_losses.items() if math.isfinite(v)},
               "checkpoint": str(run.checkpoints / (run.latest_tag() or "")),
               "skipped_samples": totals["skipped_samples"]}
    if rank != 0:
        return summary
    average_from = cfg.finetune.average_from_step
    if average_from > 0:
        summary["weight_average"] = run.average_models(average_from, step)
        if summary["weight_average"] is None:
            print(f"warning: no checkpoint at or after finetune.average_from_step={average_from}: "
                  f"no {AVERAGED_MODEL_FILE} written")
    (run.root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done: {step} steps, {summary['samples_per_s']:.1f} samples/s, final loss "
          f"{summary['final'].get('total', float('nan')):.4f}, skipped samples: {summary['skipped_samples'] or 0}; "
          f"checkpoint {summary['checkpoint']}")
    return summary


def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Run training as configured; returns the run summary (also written to summary.json)."""
    rank, world, device = setup_distributed(cfg.run.device)
    run = RunDir(cfg.run.out_dir)
    tag = prepare_run_folder(run, cfg, rank, resume)
    engine, scheduler = build_engine(cfg, device)
    if rank == 0:
        warn_partial_average_period(cfg)
    position = restore(engine, run, tag, rank, world) if tag is not None else Position()
    log = StepLog(run, cfg.run.max_steps, position.step, rank)
    meters = Meters(world)
    batches = training_batches(cfg, rank, world, position.epoch, position.batch_in_epoch)
    last_losses: dict[str, float] = {}
    engine.train()
    while position.step < cfg.run.max_steps:
        sums, loader = train_step(engine, batches, cfg, position, rank, world, meters, run)
        position.step += 1
        log.progress.update(1)
        last = position.step == cfg.run.max_steps
        if position.step % cfg.run.log_every == 0 or last:
            last_losses = reduce_mean(sums, device)  # averaged over ranks; the last step is always logged
            log.write({"step": position.step, "epoch": position.epoch, "lr": scheduler.get_last_lr()[0],
                       **meters.interval(), **last_losses})
        if position.step % cfg.run.checkpoint_every == 0 or last:
            save(engine, run, position.step, resume_state(position.step, position.epoch, loader), rank,
                 cfg.run.keep_checkpoints, cfg.finetune.average_from_step)
    log.progress.close()
    summary = write_summary(cfg, run, position.step, meters, last_losses, rank)
    log.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deteclap/train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/latest if it exists")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher (LOCAL_RANK is used)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return ERROR_EXIT
    try:
        train(cfg, resume=args.resume)
        if torch.distributed.is_initialized():
            # every rank done with its last collective before any rank tears its group down: a 2-rank
            # gloo run once ended with rank 1 aborting at exit ("terminate called without an active
            # exception") after training had finished (tests/test_train.py)
            torch.distributed.barrier()
    except RunFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return ERROR_EXIT
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return NON_FINITE_EXIT
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
