"""ONNX Runtime session settings measured to matter on shared CPUs (for registry.runtime to adopt).

``session.intra_op.allow_spinning = 0``: after each run ORT's intra-op threads busy-wait for more
work. With several sessions in one process (the service keeps one per artifact; the op-table
profiler and the benchmarks interleave dozens), the idle sessions' spinning threads take the
cores from the one that is running. Measured on 2 shared cores, interleaving 8 sessions: the
same graph ran ~4x slower with spinning on (e.g. 94.6 vs 24.1 ms p50 for a 7x7 conv at 256x256).
With a single session running back to back, spinning saves a thread wake-up per run (µs), so
turning it off costs little there.
"""

from __future__ import annotations

import onnxruntime as ort


def disable_spinning(opts: ort.SessionOptions) -> ort.SessionOptions:
    """Set ``session.intra_op.allow_spinning = 0`` on `opts` (returned for chaining)."""
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts
