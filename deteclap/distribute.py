"""Running independent jobs on this machine or on a Ray cluster: the `--distributor local|ray` flag.

Two shapes of work, each with both backends:
- `run_tasks(fn, jobs)`: stateless tasks (one shard to write). `local` runs them in this process
  or a fork pool of `workers` processes; `ray` runs one Ray task per job with `retries` retries,
  so a worker process that dies (killed, out of memory, node lost) has its job run again.
- `run_actors(cls, init_args, jobs)`: stateful workers that load something once (a labelling
  model) and then take one job at a time. `local` builds one instance here; `ray` builds
  `actors` Ray actors, each asking for `num_gpus` (fractional allowed: 0.5 puts two actors on a
  GPU) and `num_cpus`; a dead actor is restarted and its job retried.

Both yield `(job index, result)` as jobs finish, in completion order: the caller writes what must
be written once (dataset.json, failures.jsonl) and drives one progress bar. Jobs must be
idempotent (writing the same bytes twice is harmless), which is what makes retries safe.

Ray is imported only when chosen (`pip install 'deteclap[ray]'`). `ray_address` None starts a
local Ray instance (a laptop's cores) unless one is already initialised in this process; "auto"
or "ray://host:10001" joins a running cluster (`ray start --head` on the first node).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

DISTRIBUTORS = ("local", "ray")
DEFAULT_RETRIES = 3
# Ray tasks in flight per CPU of the cluster: enough to keep every worker busy while results come
# back, few enough that millions of clips' job descriptions are not all held at once.
IN_FLIGHT_PER_CPU = 2


class DistributorError(RuntimeError):
    """The distributor cannot be used (unknown name, Ray missing, no cluster at the address)."""


def check_distributor(name: str) -> None:
    if name not in DISTRIBUTORS:
        raise DistributorError(f"--distributor {name!r}: choose one of {', '.join(DISTRIBUTORS)}")


def import_ray() -> Any:
    """The ray module, or DistributorError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DistributorError("--distributor ray needs Ray: pip install 'deteclap[ray]' "
                               "(or pip install ray)") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to Ray (once per process): `address` None starts a local instance (`num_cpus` cores,
    default all); else joins that cluster. Returns the ray module."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise DistributorError(f"cannot connect to Ray at {address or 'a new local instance'}: {err}") from None
    return ray


def _max_in_flight(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)) * IN_FLIGHT_PER_CPU)


def run_tasks(fn: Callable[..., Any], jobs: Sequence[tuple], distributor: str = "local", workers: int = 1,
              retries: int = DEFAULT_RETRIES, ray_address: str | None = None, num_cpus: float = 1
              ) -> Iterator[tuple[int, Any]]:
    """`fn(*job)` for every job; yields (index of the job, result) as each finishes.

    local: in this process (workers 1) or a fork pool of `workers` processes. ray: one task per job
    needing `num_cpus` CPUs, retried up to `retries` times when its worker dies or it raises
    OSError (storage hiccups); other exceptions reach the caller at once.
    """
    check_distributor(distributor)
    if distributor == "local":
        yield from _local_tasks(fn, jobs, workers)
        return
    ray = init_ray(ray_address, num_cpus=workers if workers > 1 else None)
    remote = ray.remote(num_cpus=num_cpus, max_retries=retries, retry_exceptions=[OSError])(fn)
    pending: dict[Any, int] = {}
    next_job = 0
    limit = _max_in_flight(ray)
    while next_job < len(jobs) or pending:
        while next_job < len(jobs) and len(pending) < limit:
            pending[remote.remote(*jobs[next_job])] = next_job
            next_job += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)


def _call(args: tuple[Callable[..., Any], int, tuple]) -> tuple[int, Any]:
    fn, index, job = args
    return index, fn(*job)


def _local_tasks(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> Iterator[tuple[int, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            yield index, fn(*job)
        return
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        yield from pool.imap_unordered(_call, [(fn, i, job) for i, job in enumerate(jobs)], chunksize=1)
    finally:
        pool.terminate()
        pool.join()


def run_actors(cls: type, init_args: tuple, jobs: Sequence[tuple], method: str = "run", distributor: str = "local",
               actors: int = 1, num_gpus: float = 0, num_cpus: float = 1, retries: int = DEFAULT_RETRIES,
               ray_address: str | None = None) -> Iterator[tuple[int, Any]]:
    """`getattr(cls(*init_args), method)(*job)` for every job on `actors` workers, each built once;
    yields (index of the job, result) as each finishes.

    local: one instance in this process, jobs in order. ray: `actors` actors with `num_gpus` GPUs
    (fractional allowed) and `num_cpus` CPUs each, one job at a time per actor; a dead actor is
    restarted (up to `retries` times) and its job retried.
    """
    check_distributor(distributor)
    if distributor == "local":
        worker = cls(*init_args)
        for index, job in enumerate(jobs):
            yield index, getattr(worker, method)(*job)
        return
    if actors < 1:
        raise DistributorError("the number of actors must be at least 1")
    ray = init_ray(ray_address)
    remote_cls = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=retries,
                            max_task_retries=retries)(cls)
    pool = [remote_cls.remote(*init_args) for _ in range(min(actors, max(1, len(jobs))))]
    idle = list(pool)
    pending: dict[Any, tuple[int, Any]] = {}
    next_job = 0
    try:
        while next_job < len(jobs) or pending:
            while next_job < len(jobs) and idle:
                actor = idle.pop()
                pending[getattr(actor, method).remote(*jobs[next_job])] = (next_job, actor)
                next_job += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index, actor = pending.pop(ref)
                idle.append(actor)
                yield index, ray.get(ref)
    finally:
        for actor in pool:
            ray.kill(actor)
