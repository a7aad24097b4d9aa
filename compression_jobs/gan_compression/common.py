"""Small shared helpers for the training stages: seeding, progress bars, state-dict files."""

from __future__ import annotations

import os
import pickle
import random
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm import tqdm

T = TypeVar("T")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed torch/numpy/random; on CPU deterministic algorithms cost nothing, so turn them on."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _bars_off() -> bool:
    """No live bars when POCKETGAN_NO_PROGRESS is set or stderr is not a terminal (logs, CI, pipes):
    a redrawn bar there is a flood of carriage returns."""
    return bool(os.environ.get("POCKETGAN_NO_PROGRESS")) or not sys.stderr.isatty()


PROGRESS_LINE_EVERY_S = 30.0


def progress(it: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    """A tqdm bar with ETA on a terminal; elsewhere a plain line every 30 s (count, ETA) and one when
    the loop ends, so a long stage in a log is neither silent nor a carriage-return flood (none
    with POCKETGAN_NO_PROGRESS)."""
    if not _bars_off():
        return iter(tqdm(it, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False))
    return _lines(it, total, desc, quiet=bool(os.environ.get("POCKETGAN_NO_PROGRESS")))


def _lines(it: Iterable[T], total: int | None, desc: str, quiet: bool) -> Iterator[T]:
    start = last = time.perf_counter()
    n = 0
    for item in it:
        yield item
        n += 1
        now = time.perf_counter()
        if not quiet and now - last >= PROGRESS_LINE_EVERY_S:
            left = f", ~{(now - start) / n * (total - n):.0f} s left" if total else ""
            print(f"  {desc}: {n}/{total or '?'} after {now - start:.0f} s{left}", file=sys.stderr, flush=True)
            last = now
    if not quiet:
        print(f"  {desc}: {n} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def save_state(module: torch.nn.Module | dict, path: Path) -> None:
    """Save a state dict atomically (tmp + rename) so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    """Load a state dict with weights_only=True (never unpickle arbitrary objects)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message advises weights_only=False: never relay that
        raise ValueError(f"{path}: not a state-dict checkpoint (it holds pickled objects other than tensors)") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def counter_bar(desc: str, total: int | None = None) -> tqdm:
    """A tqdm bar updated by hand (e.g. one tick per scored sub-network)."""
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=_bars_off(), dynamic_ncols=True, leave=False)


def autocast(device: str, mixed_precision: str):  # noqa: ANN201 - a torch.autocast context
    """bf16 autocast on `device` when `mixed_precision` is "bf16" (no loss scaling needed), else a no-op context."""
    dev = torch.device(device).type
    return torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=mixed_precision == "bf16")
