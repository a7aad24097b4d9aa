"""Latency profiles measured on this machine, in the manifest's HardwareProfile form.

Per (resolution, batch): warm-up runs, then timed runs (at least `runs`, and more until
`min_time_s` has passed when given); p50/p95/p99 are numpy percentiles of the per-run wall
times (``time.perf_counter``) of ``OnnxGenerator.run`` — the same call the service makes.

Peak memory: the increase of the process's peak resident set (``VmHWM`` in /proc/self/status,
reset before each point by writing 5 to /proc/self/clear_refs) over the resident set just
before the ONNX Runtime session was created, i.e. what loading and running this model added.
Where /proc is unavailable (macOS) it falls back to ``resource.getrusage().ru_maxrss`` minus the
baseline, a process-lifetime peak that can only overstate later points.
Peak bytes per pixel (the service's admission cost): the same peak minus the resident set right
before the timed runs (session loaded, warmed up; the CPU arena is off, so nothing is pinned),
divided by batch x height x width. Recorded only where the peak can be reset (/proc).
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from registry.manifest import HardwareProfile, LatencyMeasurement
from registry.errors import ExecutionProviderUnavailable, InvalidInput
from registry.runtime import CUDA, OnnxGenerator

from compression_jobs.hardware import resolve_hardware_tag


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return _peak_mb()


def _peak_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def measure(
    generator: OnnxGenerator,
    height: int,
    width: int,
    *,
    batch: int = 1,
    warmup: int = 3,
    runs: int = 20,
    min_time_s: float = 0.0,
    max_runs: int = 10_000,
    baseline_mb: float = 0.0,
    on_run=None,  # noqa: ANN001 - optional progress callback
) -> LatencyMeasurement:
    """One point of a profile (see module docstring for what is timed and how memory is read)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(batch, generator.input_nc, height, width)).astype(np.float32)
    generator.check_input(x)
    generator.warm_up(height, width, batch=batch, runs=warmup)
    before_mb = _rss_mb()
    resettable = _reset_peak()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - start < min_time_s and len(times) < max_runs):
        t0 = time.perf_counter()
        generator.run(x)
        times.append(time.perf_counter() - t0)
        if on_run is not None:
            on_run()
    peak_mb = _peak_mb()
    per_pixel = (max(0.0, peak_mb - before_mb) * 2**20 / (batch * height * width)) if resettable else None
    ms = np.asarray(times) * 1000.0
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    return LatencyMeasurement(
        height=height, width=width, batch=batch, runs=len(times),
        p50_ms=round(p50, 4), p95_ms=round(max(p95, p50), 4), p99_ms=round(max(p99, p95, p50), 4),
        mean_ms=round(float(ms.mean()), 4),
        throughput_ips=round(batch * len(times) / float(np.sum(times)), 4),
        peak_memory_mb=round(max(0.0, peak_mb - baseline_mb), 2),
        peak_bytes_per_pixel=round(per_pixel, 1) if per_pixel is not None else None,
    )


def check_tag_matches_provider(tag: str, provider: str) -> None:
    """A `cuda…` tag needs the CUDA EP in use and a `cpu…` tag a CPU one (other tags, e.g. a phone
    farm's, are the operator's word): a profile labelled for hardware it did not run on would
    mislead every selection that reads it."""
    on_cuda = provider == CUDA
    if tag.startswith("cuda") and not on_cuda:
        raise ExecutionProviderUnavailable(f"hardware tag {tag!r} names a CUDA device but the session runs on {provider}")
    if tag.startswith("cpu") and on_cuda:
        raise InvalidInput(f"hardware tag {tag!r} names a CPU but the session runs on {provider}")


def profile_model(
    model_path: Path | str,
    *,
    resolutions: Sequence[tuple[int, int]] = ((256, 256),),
    batches: Sequence[int] = (1,),
    warmup: int = 3,
    runs: int = 20,
    min_time_s: float = 0.0,
    threads: int | None = None,
    provider: str | None = None,
    hardware_tag: str | None = None,
    progress: bool = True,
    label: str | None = None,
) -> HardwareProfile:
    """Measure `model_path` at every resolution x batch; returns a HardwareProfile for the registry.

    `threads`: ONNX Runtime intra-op threads (None = ORT default, recorded as None).
    `provider`: e.g. CPUExecutionProvider (None = CUDA if it really works, else CPU).
    """
    baseline = _rss_mb()
    # OnnxGenerator refuses (ExecutionProviderUnavailable) when the provider asked for, or CUDA chosen by
    # default, is not the one the session runs on: a profile is never measured on another device.
    generator = OnnxGenerator(model_path, providers=[provider] if provider else None, intra_op_threads=threads)
    tag = resolve_hardware_tag(hardware_tag, generator.provider)
    check_tag_matches_provider(tag, generator.provider)
    points = [(h, w, b) for (h, w) in resolutions for b in batches]
    measurements: list[LatencyMeasurement] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress, transient=True, console=Console(stderr=True)) as bar:
        for h, w, b in points:
            task = bar.add_task(f"{label or Path(model_path).parent.name} {h}x{w} b{b}", total=runs)
            measurements.append(measure(generator, h, w, batch=b, warmup=warmup, runs=runs, min_time_s=min_time_s,
                                        baseline_mb=baseline, on_run=lambda t=task: bar.advance(t)))
    return HardwareProfile(
        hardware_tag=tag,
        runtime="onnxruntime",
        runtime_version=ort.__version__,
        execution_provider=generator.provider,
        threads=threads,
        host=platform.node() or None,
        measurements=measurements,
    )
