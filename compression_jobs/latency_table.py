"""Per-block latency lookup table for the mobile-ResNet design space (once-for-all's approach).

A student is a chain of blocks whose cost depends only on their own widths and resolution::

    stem/c0  down1/c0-c1  down2/c1-c2  block/c2-h (x n_blocks)  up1/c2-c6  up2/c6-c7  head/c7

:func:`profile_ops` cuts each distinct block shape of a :class:`ChannelSpace` out of a real
student (the same layers, so the same ONNX operators), exports it alone, and measures it in
ONNX Runtime on this device: all blocks interleaved round by round, so a slow spell on a shared
machine hits every entry alike. A few whole networks are measured in the same rounds, and the
ratio whole / sum-of-blocks (per-run overheads the blocks each pay, cache effects) is stored as
the table's ``scale``. :class:`TableLatencyModel` predicts ``scale * sum(entries)`` for any
config: an exact lookup, no fitting in MACs, and usable for a device the search does not run on
(the table travels through the registry, :mod:`registry.optables`).

Sessions are built by :func:`measurement_session_options`: the service runtime's options plus
``session.intra_op.allow_spinning = 0``. With spinning on, the idle thread pools of the other
sessions in the loop keep spinning and steal the cores (measured: ~4x slower entries on 2 cores).

Each block alone also pays feeding its input and fetching its output, which a block inside a
network does not: a one-``Relu`` graph of the same input shape is measured in the same rounds
and subtracted. The calibration networks then fit ``whole ≈ intercept + scale * sum(blocks)``
(least squares; the intercept is the per-network input/output and run cost).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
import platform
import random
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from compression_jobs.models.fast import fast_inference_copy
from compression_jobs.models.mobile import ChannelConfig, MobileResnetGenerator, block_groups
from compression_jobs.models.supernet import ChannelSpace
from registry.optables import OpTable
from registry.ort_tuning import disable_spinning

FAMILY = "mobile-resnet"
SEGMENTS: tuple[str, ...] = ("stem", "down1", "down2", "block", "up1", "up2", "head")
SESSION_GROUP = 24
"""Sessions alive at once while measuring a table (bounds memory on big spaces and small devices)."""


def block_keys(config: ChannelConfig | str | Sequence[int], n_blocks: int) -> list[str]:
    """The table keys a config's latency is the sum of (one per block, repeats included)."""
    c = ChannelConfig.parse(config).channels
    keys = [f"stem/{c[0]}", f"down1/{c[0]}-{c[1]}", f"down2/{c[1]}-{c[2]}"]
    keys += [f"block/{c[2]}-{c[3 + g]}" for g in block_groups(n_blocks)]
    keys += [f"up1/{c[2]}-{c[6]}", f"up2/{c[6]}-{c[7]}", f"head/{c[7]}"]
    return keys


def space_keys(space: ChannelSpace, n_blocks: int) -> list[str]:
    """Every distinct key some config of `space` needs."""
    ch = space.choices
    hidden = sorted({h for g in set(block_groups(n_blocks)) for h in ch[3 + g]})
    keys = [f"stem/{a}" for a in ch[0]]
    keys += [f"down1/{a}-{b}" for a, b in itertools.product(ch[0], ch[1])]
    keys += [f"down2/{a}-{b}" for a, b in itertools.product(ch[1], ch[2])]
    keys += [f"block/{a}-{b}" for a, b in itertools.product(ch[2], hidden)]
    keys += [f"up1/{a}-{b}" for a, b in itertools.product(ch[2], ch[6])]
    keys += [f"up2/{a}-{b}" for a, b in itertools.product(ch[6], ch[7])]
    keys += [f"head/{a}" for a in ch[7]]
    return keys


def segment(key: str, *, input_nc: int = 3, output_nc: int = 3) -> tuple[nn.Module, int, int]:
    """(layers, input channels, input downsampling factor) of block `key`, cut from a real student."""
    kind, _, widths = key.partition("/")
    w = [int(v) for v in widths.split("-")]
    if kind not in SEGMENTS or len(w) != (1 if kind in ("stem", "head") else 2):
        raise ValueError(f"not a block key: {key!r}")
    w = w * 2 if len(w) == 1 else w  # one-width keys: the unused second width is never read
    # a one-block student holding the widths: layers 0-3 stem, 4-6 down1, 7-9 down2, 10 block, 11-13 up1, 14-16 up2, 17-19 head
    c = {"stem": (w[0], 8, 8, 8, 8, 8, 8, 8), "down1": (w[0], w[1], 8, 8, 8, 8, 8, 8),
         "down2": (8, w[0], w[1], 8, 8, 8, 8, 8), "block": (8, 8, w[0], w[1], w[1], w[1], 8, 8),
         "up1": (8, 8, w[0], 8, 8, 8, w[1], 8), "up2": (8, 8, 8, 8, 8, 8, w[0], w[1]),
         "head": (8, 8, 8, 8, 8, 8, 8, w[0])}[kind]
    net = MobileResnetGenerator(ChannelConfig(c), n_blocks=1, input_nc=input_nc, output_nc=output_nc).eval()
    span, cin, down = {"stem": (slice(0, 4), input_nc, 1), "down1": (slice(4, 7), w[0], 1),
                       "down2": (slice(7, 10), w[0], 2), "block": (slice(10, 11), w[0], 4),
                       "up1": (slice(11, 14), w[0], 4), "up2": (slice(14, 17), w[0], 2),
                       "head": (slice(17, 20), w[0], 1)}[kind]
    return nn.Sequential(*list(net.model)[span]), cin, down


def inference_graph(model: nn.Module, fast: bool) -> nn.Module:
    """What gets exported: the model itself, or its :func:`fast_inference_copy`."""
    return fast_inference_copy(model) if fast else model.eval()


def export_fixed(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """Fixed-shape ONNX export (TorchScript exporter: ~10x faster than dynamo for ~100 small graphs)."""
    sample = torch.zeros(shape)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(model.eval(), (sample,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"])
        finally:
            logging.getLogger("torch.onnx").setLevel(previous)
    return path


def measurement_session_options(threads: int | None) -> ort.SessionOptions:
    """registry.runtime.OnnxGenerator's options, plus no thread spinning (see module docstring)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return disable_spinning(opts)


def measure_interleaved(paths: dict[str, Path], shapes: dict[str, tuple[int, ...]], *, threads: int | None,
                        provider: str, runs: int, warmup: int, on_round: Callable[[], None] | None = None,
                        group_size: int = SESSION_GROUP) -> dict[str, float]:
    """p50 ms per model, every model run once per round, `group_size` sessions alive at a time
    (bounds memory; 0 = all at once, so every model sees the same load)."""
    result: dict[str, float] = {}
    names = list(paths)
    rng = np.random.default_rng(0)
    step = group_size if group_size > 0 else max(1, len(names))
    for start in range(0, len(names), step):
        group = names[start:start + step]
        sessions = {n: ort.InferenceSession(str(paths[n]), measurement_session_options(threads), providers=[provider])
                    for n in group}
        inputs = {n: rng.uniform(-1, 1, size=shapes[n]).astype(np.float32) for n in group}
        times: dict[str, list[float]] = {n: [] for n in group}
        for r in range(warmup + runs):
            for n in group:
                t0 = time.perf_counter()
                sessions[n].run(None, {"input": inputs[n]})
                if r >= warmup:
                    times[n].append((time.perf_counter() - t0) * 1000.0)
            if on_round is not None and r >= warmup:
                on_round()
        result.update({n: float(np.median(t)) for n, t in times.items()})
        del sessions
    return result


def io_model(shape: tuple[int, ...], path: Path) -> Path:
    """A one-Relu graph: what feeding an input of `shape` and fetching an output of it costs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "io",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def fit_calibration(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(intercept, scale) with measured ≈ intercept + scale * summed; a ratio when a line does not fit."""
    if not points:
        return 0.0, 1.0
    summed = np.array([p[0] for p in points])
    measured = np.array([p[1] for p in points])
    if len(points) >= 3 and np.ptp(summed) > 0:
        scale, intercept = np.polyfit(summed, measured, 1)
        if scale > 0 and intercept >= 0:
            return float(intercept), float(scale)
    return 0.0, float(np.median(measured / summed))


def calibration_configs(space: ChannelSpace, seed: int = 0, n: int = 4) -> list[ChannelConfig]:
    """Smallest, largest and random configs of `space` (distinct), measured whole to fit `scale`."""
    configs = [space.smallest(), space.largest()]
    rng = random.Random(seed)
    tries = 0
    while len(configs) < min(n, space.size) and tries < 100:
        tries += 1
        c = space.sample(rng)
        if c not in configs:
            configs.append(c)
    return configs[:n]


def profile_ops(
    space: ChannelSpace,
    *,
    hardware_tag: str,
    n_blocks: int = 9,
    resolution: int = 256,
    threads: int | None = None,
    provider: str = "CPUExecutionProvider",
    runs: int = 10,
    warmup: int = 2,
    fast_export: bool = True,
    calibrate: int = 4,
    input_nc: int = 3,
    output_nc: int = 3,
    progress: Callable[[str, int], Callable[[], None]] | None = None,
    group_size: int = SESSION_GROUP,
    also_measure: dict[str, tuple[Path, tuple[int, ...]]] | None = None,
    also_measured: dict[str, float] | None = None,
) -> OpTable:
    """Measure every block shape of `space` (and `calibrate` whole networks) on this device.

    `also_measure` (name -> ONNX path, input shape): more models measured in the same rounds,
    their p50 ms written into `also_measured` (benchmarks: the same load as the table).
    """
    if resolution <= 0 or resolution % 4:
        raise ValueError(f"resolution must be a positive multiple of 4, got {resolution}")
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    keys = space_keys(space, n_blocks)
    calib = calibration_configs(space, n=calibrate) if calibrate > 0 else []
    paths: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    with tempfile.TemporaryDirectory(prefix="pocketgan-ops-") as tmp:
        tick = progress("export", len(keys) + len(calib)) if progress else None
        for i, key in enumerate(keys):
            seg, cin, down = segment(key, input_nc=input_nc, output_nc=output_nc)
            shapes[key] = (1, cin, resolution // down, resolution // down)
            paths[key] = export_fixed(inference_graph(seg, fast_export), shapes[key], Path(tmp) / f"op{i}.onnx")
            if tick:
                tick()
        for shape in sorted({shapes[k] for k in keys}):
            name = "io/" + "x".join(map(str, shape))
            shapes[name] = shape
            paths[name] = io_model(shape, Path(tmp) / f"io{len(paths)}.onnx")
        for i, cfg in enumerate(calib):
            name = f"net/{cfg}"
            net = MobileResnetGenerator(cfg, n_blocks=n_blocks, input_nc=input_nc, output_nc=output_nc)
            shapes[name] = (1, input_nc, resolution, resolution)
            paths[name] = export_fixed(inference_graph(net, fast_export), shapes[name], Path(tmp) / f"net{i}.onnx")
            if tick:
                tick()
        for name, (path, shape) in (also_measure or {}).items():
            paths[f"extra/{name}"], shapes[f"extra/{name}"] = path, shape
        n_groups = -(-len(paths) // group_size) if group_size > 0 else 1
        on_round = progress("measure (rounds)", runs * n_groups) if progress else None
        p50 = measure_interleaved(paths, shapes, threads=threads, provider=provider, runs=runs, warmup=warmup,
                                  on_round=on_round, group_size=group_size)
    if also_measured is not None:
        also_measured.update({n: p50[f"extra/{n}"] for n in also_measure or {}})
    io = {k: p50["io/" + "x".join(map(str, shapes[k]))] for k in keys}
    entries = {k: round(max(p50[k] - io[k], 0.0), 5) for k in keys}
    calibration = []
    for cfg in calib:
        summed = sum(entries[k] for k in block_keys(cfg, n_blocks))
        calibration.append({"config": str(cfg), "measured_ms": round(p50[f"net/{cfg}"], 5), "sum_ms": round(summed, 5)})
    intercept, scale = fit_calibration([(c["sum_ms"], c["measured_ms"]) for c in calibration])  # type: ignore[misc]
    return OpTable(
        hardware_tag=hardware_tag, family=FAMILY, resolution=resolution, threads=threads,
        runtime_version=ort.__version__, execution_provider=provider, host=platform.node() or None, runs=runs,
        export={"fast": fast_export, "exporter": "torchscript", "opset": 17},
        design={"n_blocks": n_blocks, "input_nc": input_nc, "output_nc": output_nc,
                "choices": [list(c) for c in space.choices]},
        entries=entries, scale=round(scale, 5), intercept_ms=round(intercept, 5), calibration=calibration,
    )


@dataclass
class TableLatencyModel:
    """Predicts a config's latency on the table's device as ``intercept + scale * sum(block entries)``."""

    table: OpTable
    n_blocks: int

    @property
    def hardware_tag(self) -> str:
        return self.table.hardware_tag

    @classmethod
    def for_space(cls, table: OpTable, space: ChannelSpace, n_blocks: int, *, resolution: int | None = None,
                  input_nc: int = 3, output_nc: int = 3, fast_graph: bool | None = None) -> "TableLatencyModel":
        """Check up front that `table` covers every config of `space` at `resolution`, exported the same way."""
        if table.family != FAMILY:
            raise ValueError(f"op table for {table.hardware_tag!r} describes {table.family!r}, not {FAMILY!r}")
        if resolution is not None and table.resolution != resolution:
            raise ValueError(f"op table for {table.hardware_tag!r} was measured at {table.resolution}x{table.resolution}; "
                             f"the search needs {resolution}x{resolution} (re-run profile-ops with --resolution {resolution})")
        if fast_graph is not None and bool(table.export.get("fast", False)) != fast_graph:
            flag = "--fast-graph" if fast_graph else "--plain-graph"
            raise ValueError(f"op table for {table.hardware_tag!r} was measured with fast_graph={table.export.get('fast')}, "
                             f"the job exports fast_graph={fast_graph} (re-run profile-ops with {flag})")
        design = table.design
        if design.get("input_nc", input_nc) != input_nc or design.get("output_nc", output_nc) != output_nc:
            raise ValueError(f"op table for {table.hardware_tag!r} is for {design.get('input_nc')}->{design.get('output_nc')} "
                             f"channels, the model is {input_nc}->{output_nc}")
        missing = [k for k in space_keys(space, n_blocks) if k not in table.entries]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"op table for {table.hardware_tag!r} lacks {len(missing)} block shapes of this design space "
                             f"({shown}); re-run `pocketgan profile-ops` with the job's ngf/multipliers")
        return cls(table, n_blocks)

    def predict_config(self, config: ChannelConfig | str | Sequence[int], macs: int | None = None) -> float:  # noqa: ARG002
        t = self.table
        return t.intercept_ms + t.scale * sum(t.entry(k) for k in block_keys(config, self.n_blocks))

    def describe(self) -> dict:
        t = self.table
        return {"kind": "op-table", "hardware_tag": t.hardware_tag, "resolution": t.resolution, "threads": t.threads,
                "execution_provider": t.execution_provider, "runtime_version": t.runtime_version,
                "created_at": t.created_at.isoformat(), "scale": t.scale, "intercept_ms": t.intercept_ms, "entries": len(t.entries),
                "export": dict(t.export)}


def fetch_table(registry: object | None, hardware_tag: str, *, required: bool) -> OpTable | None:
    """The registry's op table for `hardware_tag` (`registry` None: from the environment).

    When `required` (the tag is not this machine, so nothing can be measured here) a missing
    table or an unusable registry is a ValueError naming the tag and the command that makes one;
    otherwise it is None and the caller measures this machine instead.
    """
    from registry.client import Registry
    from registry.errors import InvalidInput, NotFound, RegistryError
    from registry.optables import get_optable

    try:
        reg = registry if registry is not None else Registry.from_env()
        return get_optable(reg, hardware_tag)  # type: ignore[arg-type]
    except NotFound as exc:
        if required:
            raise ValueError(f"latency budget is for hardware tag {hardware_tag!r}, which is not this machine, and {exc}") from None
        return None
    except InvalidInput as exc:
        if registry is None and "POCKETGAN_REGISTRY" in str(exc) and not required:
            return None  # no registry configured: measure this machine
        raise ValueError(f"op latency table for hardware tag {hardware_tag!r}: {exc}") from None
    except RegistryError as exc:
        if required:
            raise ValueError(f"latency budget is for hardware tag {hardware_tag!r}, which is not this machine: its op "
                             f"latency table must come from the registry, which failed: {exc}") from None
        return None


def read_table_file(path: str | Path, hardware_tag: str | None = None) -> OpTable:
    """A table written by `pocketgan profile-ops --out FILE` (a device whose table never went to a
    registry); ValueError naming the file when it is missing, too big, malformed or for another tag."""
    from registry.errors import InvalidInput
    from registry.optables import MAX_OPTABLE_BYTES, parse_optable

    p = Path(path).expanduser()
    try:
        size = p.stat().st_size
        if size > MAX_OPTABLE_BYTES:
            raise ValueError(f"op table file {p} is {size} bytes, over the {MAX_OPTABLE_BYTES}-byte limit")
        return parse_optable(p.read_bytes(), str(p), hardware_tag)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None
    except OSError as exc:
        raise ValueError(f"op table file {p}: {exc.strerror or exc}") from None


@functools.lru_cache(maxsize=4096)
def block_macs(key: str, resolution: int, input_nc: int = 3, output_nc: int = 3) -> int:
    """MACs of block `key` at network input `resolution` (published convention, as in manifests)."""
    from compression_jobs.counting import count_macs

    seg, cin, down = segment(key, input_nc=input_nc, output_nc=output_nc)
    return count_macs(seg, resolution // down, input_nc=cin)


def config_macs(config: ChannelConfig | str | Sequence[int], n_blocks: int, resolution: int) -> int:
    """A config's MACs as the sum of its blocks' (equals counting the whole network; cached per block,
    so scanning thousands of configs is cheap)."""
    return sum(block_macs(k, resolution) for k in block_keys(config, n_blocks))


def random_configs(space: ChannelSpace, n: int, seed: int = 0) -> list[ChannelConfig]:
    """`n` seeded random draws from `space` (repeats possible): the candidates the picks below scan."""
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def pick_fastest(lut: TableLatencyModel, configs: Iterable[ChannelConfig], *, max_macs: int,
                 min_macs: int = 0) -> ChannelConfig | None:
    """The config the table predicts fastest among `configs` with `min_macs` <= MACs <= `max_macs`
    (MACs at the table's resolution); None when none is in that window.

    With a window just under a student's MACs this is "as many MACs, less time": what MACs cannot
    rank (full-resolution channels cost far more per MAC than trunk channels)."""
    best, best_ms = None, float("inf")
    for cfg in configs:
        if min_macs <= config_macs(cfg, lut.n_blocks, lut.table.resolution) <= max_macs:
            ms = lut.predict_config(cfg)
            if ms < best_ms:
                best, best_ms = cfg, ms
    return best


def pick_most_macs(lut: TableLatencyModel, configs: Iterable[ChannelConfig], *, max_ms: float) -> ChannelConfig | None:
    """The config with the most MACs among `configs` the table predicts no slower than `max_ms`
    (ties: the faster one); None when none is that fast. "More capacity at the same speed"."""
    best, best_key = None, (-1, 0.0)
    for cfg in configs:
        ms = lut.predict_config(cfg)
        if ms <= max_ms:
            key = (config_macs(cfg, lut.n_blocks, lut.table.resolution), -ms)
            if key > best_key:
                best, best_key = cfg, key
    return best
