"""Prometheus metrics of the service (base units, `_total` counters, bounded labels).

Built lazily by `build_metrics()` from inside the service instance: BentoML sets
PROMETHEUS_MULTIPROC_DIR in each worker before instantiating the service, and prometheus_client
decides single- vs multi-process mode when it is first imported, so importing it at module import
time would hide our metrics from BentoML's multi-worker `/metrics`. Gauges use `livemax`/`livesum`
multiprocess modes so one scrape aggregates all live workers.

Label values are bounded: task and device class come from the configuration (validated before
they are used as labels), artifact ids from promoted sets, reasons from fixed lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from service.images import REJECTION_REASONS

# Why the ASGI edge (service/edge.py) refused a request before BentoML saw it.
EDGE_REASONS = (
    "not_found", "method_not_allowed", "forbidden", "unauthorized", "body_timeout", "body_too_large",
    "uploads_full", "too_many_requests", "timeout", "internal_error",
)
SWAP_FAILURE_REASONS = ("contract", "integrity", "unreachable", "not_found", "load_error", "other")


@dataclass
class Metrics:
    request_duration: Any
    expected_duration: Any
    inference_duration: Any
    processing_duration: Any
    budget: Any
    selections: Any
    no_eligible: Any
    loaded_artifact: Any
    serving_from_cache: Any
    swaps: Any
    swap_failures: Any
    poll_errors: Any
    since_last_poll: Any
    rejections: Any
    device_class_budget: Any
    edge_refusals: Any
    admission: Any
    admitted_bytes: Any
    memory_budget: Any
    # serving trust (issue 11): fallback, circuit breaker, re-probing, policy
    model_failures: Any = None
    fallbacks: Any = None
    artifact_ejected: Any = None
    artifact_ejections: Any = None
    latency_probes: Any = None
    policy_selections: Any = None

    def init_labels(self, tasks: list[str], device_classes: list[str]) -> None:
        """Create zero-valued children so every metric shows up in the first scrape."""
        for t in tasks:
            for dc in device_classes:
                for outcome in ("met", "missed"):
                    self.budget.labels(t, dc, outcome)
                self.no_eligible.labels(t, dc)
            self.swaps.labels(t)
            for r in SWAP_FAILURE_REASONS:
                self.swap_failures.labels(t, r)
            self.poll_errors.labels(t)
            self.serving_from_cache.labels(t).set(0)
            self.since_last_poll.labels(t).set(0)
        for r in REJECTION_REASONS:
            self.rejections.labels(r)
        for r in EDGE_REASONS:
            self.edge_refusals.labels(r)
        for outcome in ADMISSION_OUTCOMES:
            self.admission.labels(outcome)
        for t in tasks:
            self.fallbacks.labels(t)
            self.latency_probes.labels(t)

    def set_budgets(self, device_classes: dict[str, float]) -> None:
        """Export each device class's default budget (ms in settings, seconds here) for p95-vs-budget alerts."""
        for dc, ms in device_classes.items():
            self.device_class_budget.labels(dc).set(ms / 1000.0)


ADMISSION_OUTCOMES = ("admitted", "too_large", "busy")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def filter_exposition(text: str, artifacts: dict[str, set[str]], endpoints: Iterable[str]) -> str:
    """Drop series that must not outlive their subject (applied to every /metrics answer).

    prometheus_client cannot remove labelled children in multiprocess mode (BentoML's), so series of
    an artifact that left the promoted set (for its task) and BentoML request series for paths that
    are not routes (a scanner's) are removed from the exposition instead.
    """
    keep_endpoints = set(endpoints)
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line) if line and not line.startswith("#") else None
        if m and m.group(2):
            name, labels = m.group(1), dict(_LABEL.findall(m.group(2)))
            if name.startswith("pocketgan_") and "artifact" in labels and "task" in labels:
                if labels["artifact"] not in artifacts.get(labels["task"], set()):
                    continue
            elif name.startswith("bentoml_") and "endpoint" in labels and labels["endpoint"] not in keep_endpoints:
                continue
        out.append(line)
    return "\n".join(out) + "\n"


_METRICS: Metrics | None = None


def build_metrics(budget_buckets_s: list[float]) -> Metrics:
    """The process-wide metrics (created once; prometheus_client forbids duplicates)."""
    global _METRICS
    if _METRICS is not None:
        return _METRICS
    import prometheus_client as pc  # deferred on purpose, see module docstring

    fine = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
    _METRICS = Metrics(
        request_duration=pc.Histogram(
            "pocketgan_request_duration_seconds", "Server-side translate time (decode to encode), by chosen artifact",
            ["task", "device_class", "artifact"], buckets=budget_buckets_s,
        ),
        expected_duration=pc.Histogram(
            "pocketgan_expected_duration_seconds",
            "Selector's expected (predicted) p95 time of the chosen artifact at the request's size; profiled artifacts only",
            ["task", "device_class", "artifact"], buckets=budget_buckets_s,
        ),
        inference_duration=pc.Histogram(
            "pocketgan_inference_duration_seconds", "ONNX Runtime session.run time", ["task", "artifact"],
            buckets=fine,
        ),
        processing_duration=pc.Histogram(
            "pocketgan_processing_duration_seconds", "Time outside inference: decode, preprocess, postprocess, encode",
            ["task", "stage"], buckets=fine,
        ),
        budget=pc.Counter("pocketgan_budget_total", "Translate requests by budget outcome", ["task", "device_class", "outcome"]),
        selections=pc.Counter("pocketgan_selections_total", "Selections per artifact", ["task", "artifact"]),
        no_eligible=pc.Counter(
            "pocketgan_no_eligible_total", "Requests where no promoted artifact was expected to meet the budget",
            ["task", "device_class"],
        ),
        loaded_artifact=pc.Gauge(
            "pocketgan_loaded_artifact_info", "1 for each artifact loaded and serving", ["task", "artifact", "source"],
            multiprocess_mode="livemax",
        ),
        serving_from_cache=pc.Gauge(
            "pocketgan_serving_from_cache", "1 when the loaded set came from the local cache (registry down at load)",
            ["task"], multiprocess_mode="livemax",
        ),
        swaps=pc.Counter("pocketgan_model_swaps_total", "Model sets swapped in (including the first load)", ["task"]),
        swap_failures=pc.Counter(
            "pocketgan_model_swap_failures_total", "Attempts to load a new set that failed (old set kept)", ["task", "reason"],
        ),
        poll_errors=pc.Counter("pocketgan_registry_poll_errors_total", "Alias polls that failed", ["task"]),
        since_last_poll=pc.Gauge(
            "pocketgan_registry_seconds_since_last_successful_poll",
            "Seconds since the last successful alias poll (worst live worker; updated every poll tick)",
            ["task"], multiprocess_mode="livemax",
        ),
        rejections=pc.Counter("pocketgan_input_rejections_total", "Requests refused with a 4xx, by reason", ["reason"]),
        device_class_budget=pc.Gauge(
            "pocketgan_device_class_budget_seconds", "Configured default latency budget of each device class",
            ["device_class"], multiprocess_mode="livemax",
        ),
        edge_refusals=pc.Counter(
            "pocketgan_http_refusals_total",
            "Requests answered by the edge before the app: unknown path, method, access, slow/large body, slots, deadline",
            ["reason"],
        ),
        admission=pc.Counter(
            "pocketgan_admission_total", "Translate admission by memory cost: admitted, too_large (413), busy (503)",
            ["outcome"],
        ),
        admitted_bytes=pc.Gauge(
            "pocketgan_admitted_bytes", "Estimated bytes of the requests in flight (sum over live workers)",
            multiprocess_mode="livesum",
        ),
        memory_budget=pc.Gauge(
            "pocketgan_memory_budget_bytes", "Bytes the workers admit for in-flight requests (sum over live workers)",
            multiprocess_mode="livesum",
        ),
        # serving trust (issue 11)
        model_failures=pc.Counter(
            "pocketgan_model_failures_total", "Inference runs that raised (the request was retried on another artifact)",
            ["task", "artifact"],
        ),
        fallbacks=pc.Counter("pocketgan_fallbacks_total", "Requests served by a second artifact after the first failed", ["task"]),
        artifact_ejected=pc.Gauge(
            "pocketgan_artifact_ejected", "1 while the circuit breaker keeps an artifact out of selection (any live worker)",
            ["task", "artifact"], multiprocess_mode="livemax",
        ),
        artifact_ejections=pc.Counter(
            "pocketgan_artifact_ejections_total", "Times the circuit breaker ejected an artifact for a cool-down", ["task", "artifact"],
        ),
        latency_probes=pc.Counter(
            "pocketgan_latency_probes_total", "Requests that re-probed an artifact excluded by its own observed latency", ["task"],
        ),
        policy_selections=pc.Counter(
            "pocketgan_policy_selections_total", "Selections by device class and selection policy", ["task", "device_class", "policy"],
        ),
    )
    return _METRICS
