"""Inference lanes: a fixed set of job threads per worker that take the next queued job themselves.

Why not `anyio.to_thread.run_sync(..., limiter=CapacityLimiter(n))`: there the queue lives in the
event loop. A finished job's thread hands its result to the loop, the awaiting task releases the
limiter, the next waiter's task wakes and only then gives its job to a thread: two or three loop
iterations during which that core has no job, and at concurrency 16 the loop is busy parsing the next
requests, so each hand-over waits behind them. Measured on 2 cores, 1 worker x 2 jobs, C=16
(`benchmarks/service_overhead.py`): the worker used 1.80 of the 2 cores that way; with a lane it keeps
them busy (see README "Service performance"). Here the queue is the executor's: a thread that finishes a job takes
the next one at once; the loop only submits jobs and receives results.

Semantics kept from the anyio version: FIFO; a job still queued when its request is cancelled never
runs; a job already running cannot be interrupted (an ONNX Runtime call), so the cancelled request
waits for it to end before the cancellation goes on: the caller's accounting (memory admitted, the
edge's concurrency slot) is released only when the work has really stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class LaneClosed(RuntimeError):
    """The lane was shut down (the worker is stopping): the job was not run. Not the model's fault."""


class Lane:
    """`threads` jobs at once, FIFO; `await lane.run(fn, *args)` from the event loop."""

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError(f"a lane needs at least one thread, got {threads}")
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"pocketgan-{name}")
        self.closed = False

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.closed:
            raise LaneClosed("the worker is shutting down")
        ctx = contextvars.copy_context()  # what anyio's to_thread carried over too (BentoML's request context)
        job: Future[T] = self._pool.submit(ctx.run, fn, *args)
        done = asyncio.wrap_future(job)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            if job.cancel():  # still queued: it never runs
                raise
            await _wait_out(done)  # running: it cannot be interrupted; the caller's accounting waits for it
            raise

    def shutdown(self) -> None:
        """Refuse new jobs (LaneClosed) and drop queued ones; running ones finish in their threads."""
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _wait_out(done: asyncio.Future[T]) -> None:
    """Wait for `done` however often this task is cancelled meanwhile (its result or error is not needed)."""
    while not done.done():
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            continue
        except Exception:  # noqa: BLE001 - the job's error belongs to a request that is cancelled anyway
            return
    if not done.cancelled():
        done.exception()  # retrieved: no "exception was never retrieved" warning
