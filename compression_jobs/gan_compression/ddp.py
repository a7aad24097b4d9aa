"""Data-parallel distillation / supernet training under ``torchrun`` (PyTorch distributed).

    torchrun --standalone --nproc_per_node 2 -m compression_jobs.gan_compression.ddp tiny --run-dir runs/tiny

Every rank runs the same stage (default ``train-supernet``) on its share of each batch:

- data: batch k is drawn from ``TrainStream`` exactly as in one process (it depends only on the
  seed and k), and rank r keeps rows ``[r*b/N, (r+1)*b/N)``; ``distill.batch_size`` stays the
  *effective* (global) batch and must be divisible by the number of ranks;
- channel config: sampled from (seed, step) on every rank, and checked to agree each step;
- gradients: averaged with one ``all_reduce`` (``batch_sync.BatchSync``) over the full shared tensors after each backward.
  A sampled sub-network slices the shared weights, so every parameter still takes part in the
  graph (outside the slice its gradient is exactly zero): nothing is "unused". Measured on 2 CPU
  ranks (tiny supernet, 6 steps): ``DistributedDataParallel`` with and without
  ``find_unused_parameters`` gives bit-identical weights to this manual average, with no speed
  difference measurable on 2 shared cores. The manual average is kept because it leaves the
  one-process loop and its state dicts as they are (no wrapper, no ``module.`` keys).

Why N ranks compute what one process computes, and the batch-norm caveat: ``batch_sync``.

Rank 0 runs the stage through ``pipeline.run_stage`` (temp folder, state.json, resume); the
other ranks run it in a private copy of the run dir that is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import click
import torch
import torch.distributed as dist

from compression_jobs.compress_cli import job_context
from compression_jobs.pipeline import run_stage

DEFAULT_STAGE = "train-supernet"


def _backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def _private_run_dir(run_dir: Path, rank: int, stage: str) -> Path:
    """A scratch run dir for a non-zero rank: links to the other stages' outputs plus a copy of state.json."""
    scratch = Path(tempfile.mkdtemp(prefix=f"pocketgan-rank{rank}-"))
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.name.startswith(".") and entry.name != stage:
            (scratch / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
        elif entry.name == "state.json":
            shutil.copyfile(entry, scratch / entry.name)
    return scratch


@click.command("ddp", context_settings={"show_default": True})
@click.argument("config")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False),
              help="Run dir holding the earlier stages' outputs (e.g. distill for train-supernet).")
@click.option("--stage", default=DEFAULT_STAGE, type=click.Choice(["distill", "train-supernet"]),
              help="Training stage to run data-parallel.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
def main(config: str, run_dir: str, stage: str, overrides: tuple[str, ...]) -> None:
    """Run one training stage data-parallel on every rank started by torchrun."""
    ctx = job_context(config, run_dir, None, overrides)
    device = ctx.job.device
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(_backend(device))
    rank, world = dist.get_rank(), dist.get_world_size()
    scratch = None
    try:
        if rank != 0:
            os.environ["POCKETGAN_NO_PROGRESS"] = "1"
            scratch = _private_run_dir(ctx.run_dir, rank, stage)
            ctx.run_dir = scratch
        info = run_stage(ctx, stage)
        dist.barrier()
        if rank == 0:
            click.echo(f"{stage}: {world} ranks ({_backend(device)}), effective batch "
                       f"{ctx.job.distill.batch_size}; outputs in {ctx.stage_dir(stage)}", err=True)
            click.echo(json.dumps(info, indent=2, default=str))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
