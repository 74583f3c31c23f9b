"""Runs every (loss, seed) job, in this process or in spawned worker processes, with a progress bar.

Each run seeds its own generators and initial weights, so a run's numbers depend neither on which process
ran it nor on what ran before it there; results come back in job order.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch

from ..toy_rlvr import TrainConfig, train
from .specs import LossSpec


def progress(total: int, disabled: bool):
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    # Off a terminal (CI logs) \r-updates pile up, so refresh rarely there.
    return tqdm(total=total, disable=disabled, file=sys.stderr, mininterval=0.2 if tty else 30.0,
                dynamic_ncols=tty, ascii=not tty, unit="step")


def run_one(spec: LossSpec, seed: int, cfg: TrainConfig, on_step=None) -> dict[str, Any]:
    run = train(spec.name, seed, cfg, loss_config=spec.config(), on_step=on_step)
    run.pop("policy")  # not picklable across processes, not needed
    run["label"] = spec.label
    return run


_QUEUE = None  # progress queue of a worker process


def _worker_init(queue, threads: int) -> None:
    global _QUEUE
    _QUEUE = queue
    torch.set_num_threads(threads)


def _worker(spec: LossSpec, seed: int, cfg: TrainConfig) -> dict[str, Any]:
    pending = [0]

    def on_step(step: int) -> None:  # report progress in chunks: one queue message per step is wasteful
        pending[0] += 1
        if pending[0] >= 5 or step == cfg.steps:
            _QUEUE.put(pending[0])
            pending[0] = 0

    return run_one(spec, seed, cfg, on_step=on_step)


def run_parallel(jobs: Sequence[tuple[LossSpec, int]], cfg: TrainConfig, workers: int, threads: int, bar,
                 bar_tty: bool) -> list[dict[str, Any]]:
    """One run per process task. ``spawn``: forking a process whose OpenMP pool is running can hang."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    bar.set_postfix_str(f"{workers} worker processes", refresh=bar_tty)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(q, threads)) as pool:
        futures = [pool.submit(_worker, spec, seed, cfg) for spec, seed in jobs]
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=0.25)
            for f in done:
                f.result()  # re-raise a worker's exception here
            while True:
                try:
                    bar.update(q.get_nowait())
                except queue_mod.Empty:
                    break
        return [f.result() for f in futures]


def run_jobs(jobs: Sequence[tuple[LossSpec, int]], cfg: TrainConfig, workers: int, threads: int,
             no_progress: bool) -> list[dict[str, Any]]:
    bar = progress(len(jobs) * cfg.steps, no_progress)
    bar_tty = sys.stderr.isatty()  # off a terminal, a postfix change must not force an extra log line
    try:
        if workers <= 1:
            runs = []
            for spec, seed in jobs:
                bar.set_postfix_str(f"{spec.label} seed {seed}", refresh=bar_tty)
                runs.append(run_one(spec, seed, cfg, on_step=lambda _: bar.update(1)))
            return runs
        return run_parallel(jobs, cfg, workers, threads, bar, bar_tty)
    finally:
        bar.close()
