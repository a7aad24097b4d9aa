"""What one data-parallel rank does differently from a single process (library half of ``ddp``).

Kept apart from the torchrun entry point (``ddp.py``) so training code (``distill.py``) can use it
without importing the job CLI: the entry point depends on the pipeline, the pipeline on this.

Equal-size shards of a mean loss averaged over ranks give the one-process gradient, so N ranks
compute what one process computes with the same effective batch (up to float rounding), as long
as no layer mixes samples: instance norm does not, batch norm does. A batch-norm discriminator
gets ``SyncBatchNorm`` on CUDA; on CPU (gloo) PyTorch has no SyncBatchNorm, so its batch
statistics are per rank there (a warning says so).
"""

from __future__ import annotations

import warnings
import zlib
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


class BatchSync:
    """What one rank does differently from a single process: its batch shard and gradient averaging."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    @classmethod
    def current(cls) -> "BatchSync | None":
        """The initialised default process group with more than one rank, else None (one process)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size())
        return None

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous, equal share of a global batch."""
        n = batch.shape[0]
        if n % self.world_size:
            raise ValueError(f"global batch of {n} does not split evenly over {self.world_size} ranks; "
                             f"set distill.batch_size to a multiple of the number of processes")
        per = n // self.world_size
        return batch[self.rank * per : (self.rank + 1) * per]

    def check_same(self, config: object) -> None:
        """Fail loudly if ranks sampled different sub-networks (they would train different slices)."""
        code = torch.tensor([zlib.crc32(str(config).encode())], dtype=torch.int64)
        lo, hi = code.clone(), code.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if lo.item() != hi.item():
            raise RuntimeError(f"rank {self.rank}: channel config {config} differs from another rank's")

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Mean of every gradient over ranks, in one flat all_reduce.

        A parameter without a gradient keeps none (as in one process, the optimizer skips it); which
        parameters have one is the same on every rank because the sub-network is.
        """
        params = [p for p in params if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def average_log(self, log: dict[str, float]) -> dict[str, float]:
        """Losses averaged over ranks (each rank only saw its shard)."""
        if not log:
            return log
        keys = sorted(log)
        t = torch.tensor([log[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def prepare_discriminator(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Batch norm over the global batch where PyTorch can (CUDA); on CPU warn that it is per rank."""
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return model
        if device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        warnings.warn("discriminator batch norm uses per-rank batch statistics on CPU (no SyncBatchNorm); "
                      "use teacher.norm_d=instance for results identical to one process", stacklevel=2)
        return model
