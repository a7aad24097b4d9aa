"""A per-artifact circuit breaker: an artifact that keeps failing at run time is taken out of
selection for a cool-down instead of failing every request that picks it.

Closed: failures are counted; `failures` in a row (a success resets the count) eject it.
Ejected: `ejected()` is True until `cooldown_s` has passed. Then half-open: it is selectable
again, and a single further failure ejects it again (a success closes it). State is per worker
process, like the model sets; `on_change(task, artifact, ejected)` feeds the metrics.
"""

from __future__ import annotations

import time
from typing import Callable


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str, bool], None] | None = None,
    ) -> None:
        self.failures = max(1, failures)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change or (lambda task, aid, ejected: None)
        self._fails: dict[tuple[str, str], int] = {}
        self._until: dict[tuple[str, str], float] = {}

    def ejected(self, task: str, artifact_id: str) -> bool:
        key = (task, artifact_id)
        until = self._until.get(key)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._until[key]  # cool-down over: half-open, one more failure ejects again
        self._fails[key] = self.failures - 1
        self._on_change(task, artifact_id, False)
        return False

    def failure(self, task: str, artifact_id: str) -> bool:
        """Count one run-time failure; True when it ejects the artifact."""
        key = (task, artifact_id)
        if self.ejected(task, artifact_id):
            return False
        n = self._fails.get(key, 0) + 1
        self._fails[key] = n
        if n < self.failures:
            return False
        self._until[key] = self._clock() + self.cooldown_s
        self._fails.pop(key, None)
        self._on_change(task, artifact_id, True)
        return True

    def success(self, task: str, artifact_id: str) -> None:
        self._fails.pop((task, artifact_id), None)

    def seconds_left(self, task: str, artifact_id: str) -> float:
        until = self._until.get((task, artifact_id))
        return max(0.0, until - self._clock()) if until is not None else 0.0
