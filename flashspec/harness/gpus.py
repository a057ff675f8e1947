"""One run per GPU on one machine: parallel launchers' workers claim GPUs from a pool of lock files.

hydra-joblib-launcher runs jobs in worker processes that it reuses and respawns, and a job's number says
nothing about which GPU is free (jobs finish out of order, so `job.num % n_gpus` can put two runs on one GPU).
Instead each worker process, before its first job, claims a slot of `per_job` GPUs by taking an exclusive
lock on one file per GPU, and keeps it until it exits; the kernel drops the locks of a process that dies,
so a crashed worker frees its GPUs. The claim sets CUDA_VISIBLE_DEVICES before anything in the process
touches CUDA, so the run's `cuda` device is its own GPU(s). The lock files are machine-wide (`lock_dir`),
so concurrent sweeps on one machine share the pool, and a worker that finds every slot taken waits.

conf/hydra/launcher/joblib_gpus.yaml wires it: n_jobs = the number of slots, and the `GPUPool` callback.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
HELD: list[FileLock] = []  # this process's claim, held for its lifetime
CLAIMED: list[str] = []


def visible_gpus() -> list[str]:
    """The GPUs runs may use: FLASHSPEC_GPUS or CUDA_VISIBLE_DEVICES (comma lists) when set, else every
    device CUDA reports."""
    for name in ("FLASHSPEC_GPUS", "CUDA_VISIBLE_DEVICES"):
        if name in os.environ:
            return [g.strip() for g in os.environ[name].split(",") if g.strip()]
    import torch  # only here: the launcher process needs it for this count alone

    return [str(i) for i in range(torch.cuda.device_count())]


def slots(gpus: list[str], per_job: int) -> list[list[str]]:
    """Consecutive groups of `per_job` GPUs (a target spread over several with device_map=auto needs them)."""
    if per_job < 1:
        raise ValueError(f"hydra.callbacks.gpu_pool.per_job={per_job}: use 1 or more")
    if len(gpus) < per_job:
        raise ValueError(
            f"{len(gpus)} GPU(s) visible ({','.join(gpus) or 'none'}) but {per_job} per job: lower "
            "hydra.callbacks.gpu_pool.per_job, list the GPUs in FLASHSPEC_GPUS=0,1,..., or use "
            "hydra/launcher=joblib for CPU-only sweeps"
        )
    return [gpus[i: i + per_job] for i in range(0, len(gpus) - per_job + 1, per_job)]


def try_claim(slot: list[str], lock_dir: Path) -> list[FileLock] | None:
    """All of the slot's GPU locks, or none of them."""
    taken: list[FileLock] = []
    for gpu in slot:
        lock = FileLock(str(lock_dir / f"gpu-{gpu}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            for held in taken:
                held.release()
            return None
        taken.append(lock)
    return taken


def claim(pool: list[list[str]], lock_dir: Path, poll_s: float = 0.5) -> list[str]:
    """This process's GPUs: the first free slot, waiting until one is free; the same slot on later calls."""
    if CLAIMED:
        return CLAIMED
    lock_dir.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for slot in pool:
            locks = try_claim(slot, lock_dir)
            if locks is not None:
                HELD.extend(locks)
                CLAIMED.extend(slot)
                return CLAIMED
        if not waiting:
            log.info("every GPU slot of %s is taken (locks in %s): waiting for one", pool, lock_dir)
            waiting = True
        time.sleep(poll_s)


class GPUPool(Callback):
    """Claims this worker's GPUs before its job runs (Hydra calls on_job_start inside the worker)."""

    def __init__(self, gpus: str, per_job: int = 1, lock_dir: str = "/tmp/flashspec-gpus") -> None:
        self.pool = slots([g for g in gpus.split(",") if g], per_job)
        self.lock_dir = Path(lock_dir)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        import torch

        if torch.cuda.is_initialized() and not CLAIMED:
            # CUDA_VISIBLE_DEVICES is read once, when CUDA starts: too late to choose the GPU now.
            raise RuntimeError("CUDA was initialised in this worker before it claimed a GPU: the GPU pool "
                               "needs fresh worker processes (the joblib launcher's loky backend)")
        gpus = claim(self.pool, self.lock_dir)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        log.info("GPU pool: process %d runs job %s on GPU %s", os.getpid(), config.hydra.job.num,
                 os.environ["CUDA_VISIBLE_DEVICES"])


def gpu_list() -> str:
    return ",".join(visible_gpus())


def gpu_slots(per_job: int) -> int:
    return len(slots(visible_gpus(), int(per_job)))


def register_resolvers() -> None:
    """${visible_gpus:} (a comma list) and ${gpu_slots:<per_job>} (how many runs fit at once); named
    functions, so Hydra can hand them to workers by reference."""
    for name, fn in (("visible_gpus", gpu_list), ("gpu_slots", gpu_slots)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
