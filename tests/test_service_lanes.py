"""Inference lanes (service.lanes): FIFO, bounded, no event-loop round trip between jobs, honest cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from service.lanes import Lane, LaneClosed


def test_fifo_and_at_most_threads_at_once() -> None:
    lane = Lane(2, "t")
    lock = threading.Lock()
    running, peak, started = [0], [0], []

    def job(i: int) -> int:
        with lock:
            started.append(i)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i * i

    async def main() -> list[int]:
        return await asyncio.gather(*(lane.run(job, i) for i in range(8)))

    try:
        assert asyncio.run(main()) == [i * i for i in range(8)]
    finally:
        lane.shutdown()
    assert peak[0] == 2
    assert started[:2] == sorted(started[:2]) and started[2:] == list(range(2, 8))  # queued jobs start in order


def test_next_job_starts_while_the_event_loop_is_blocked() -> None:
    """What the lane is for: a finished job's thread takes the next one itself. With the queue in the
    event loop (anyio's CapacityLimiter) the second job could not start before the loop ran again."""
    lane = Lane(1, "t")
    second_started: list[float] = []

    async def main() -> float:
        first = asyncio.ensure_future(lane.run(time.sleep, 0.05))
        second = asyncio.ensure_future(lane.run(lambda: second_started.append(time.monotonic())))
        await asyncio.sleep(0)  # both submitted
        await asyncio.sleep(0)
        blocked_until = time.monotonic() + 1.5
        time.sleep(1.5)  # the loop is busy (a long parse, say): nothing async runs
        await asyncio.gather(first, second)
        return blocked_until

    try:
        blocked_until = asyncio.run(main())
    finally:
        lane.shutdown()
    assert second_started and second_started[0] < blocked_until - 1.0  # the first job takes 0.05 s


def test_a_queued_job_that_is_cancelled_never_runs() -> None:
    lane = Lane(1, "t")
    gate = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        blocker = asyncio.ensure_future(lane.run(gate.wait, 5))
        queued = asyncio.ensure_future(lane.run(ran.append, "queued"))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        gate.set()
        await blocker

    try:
        asyncio.run(main())
    finally:
        lane.shutdown()
    time.sleep(0.05)
    assert ran == []


def test_a_running_job_is_waited_for_when_its_request_is_cancelled() -> None:
    """The caller's accounting (admitted memory, the edge's slot) is released in its `finally`: that must
    not happen while the ONNX call still runs."""
    lane = Lane(1, "t")
    finished: list[float] = []

    def job() -> None:
        time.sleep(0.3)
        finished.append(time.monotonic())

    async def main() -> float:
        task = asyncio.ensure_future(lane.run(job))
        await asyncio.sleep(0.05)  # running now
        task.cancel()
        await asyncio.sleep(0.01)
        task.cancel()  # cancelled again meanwhile: still waits
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic()

    try:
        returned = asyncio.run(main())
    finally:
        lane.shutdown()
    assert finished and finished[0] <= returned


def test_errors_and_context_reach_the_caller() -> None:
    lane = Lane(1, "t")
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def boom() -> None:
        raise RuntimeError("model failed")

    async def main() -> str:
        var.set("request-7")
        with pytest.raises(RuntimeError, match="model failed"):
            await lane.run(boom)
        return await lane.run(var.get)

    try:
        assert asyncio.run(main()) == "request-7"
    finally:
        lane.shutdown()


def test_a_shut_lane_refuses_new_jobs_with_its_own_error() -> None:
    """The service passes LaneClosed through as 503 not_ready: a stopping worker is not a failing model
    (the pool would count any other exception against the artifact and eject it)."""
    lane = Lane(1, "t")
    lane.shutdown()
    with pytest.raises(LaneClosed):
        asyncio.run(lane.run(time.sleep, 0))


def test_a_lane_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        Lane(0, "t")


def test_routes_get_the_service_instance_without_a_thread_hop() -> None:
    """BentoML binds `self` with Depends(bentoml.get_current_service), a plain function FastAPI would call in a
    worker thread per request; the service overrides exactly that dependency with a coroutine."""
    import inspect

    import bentoml

    from service.service import PocketGAN, app

    override = app.dependency_overrides.get(bentoml.get_current_service)
    assert override is not None and inspect.iscoroutinefunction(override)
    for route in ("translate", "resolve", "models"):
        self_param = inspect.signature(getattr(PocketGAN.inner, route)).parameters["self"]
        assert self_param.default.dependency is bentoml.get_current_service
