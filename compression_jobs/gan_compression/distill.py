"""GAN Compression's distillation objective and the training loop shared by three stages.

- ``distill``: train the largest student (the supernet at its max config) from the teacher.
- ``train-supernet``: once-for-all training; each step samples a channel config and only
  that slice of the shared weights receives gradient.
- ``finetune``: an extracted sub-network trained a few more steps with the same objective.

Objective (Li et al., 2020), unified for paired and unpaired data: the teacher's output is the
target (pseudo-pair); L_recon = |G_s(x) - G_t(x)|_1, L_distill = Σ_k ‖f_k(S_k) - T_k‖² over
intermediate features with learnable 1x1 mappers f_k, L_gan with a discriminator initialised
from the teacher's, and with paired data an extra L1 to the ground truth.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_jobs.data import ImageSet, TrainStream
from compression_jobs.gan_compression.common import autocast, progress
from compression_jobs.gan_compression.config import DistillConfig
from compression_jobs.gan_compression.batch_sync import BatchSync
from compression_jobs.losses import FeatureMapper, FeatureTap, GANLoss, default_distill_layers
from compression_jobs.metrics import ssim
from compression_jobs.models.mobile import ChannelConfig


@dataclass
class DistillParts:
    """The trainable pieces that persist between stages (saved/loaded as state dicts)."""

    student: nn.Module
    mapper: FeatureMapper | None
    discriminator: nn.Module
    teacher_layers: list[str]
    student_layers: list[str]


def feature_channels(model: nn.Module, layers: list[str], x: torch.Tensor, **kw) -> list[int]:
    """Channels of each tapped layer, found by one no-grad forward pass."""
    tap = FeatureTap(model, layers)
    try:
        with torch.no_grad():
            model(x, **kw) if kw else model(x)
        return [f.shape[1] for f in tap.features()]
    finally:
        tap.close()


def make_mapper(teacher: nn.Module, student: nn.Module, n_layers: int, sample: torch.Tensor) -> tuple[FeatureMapper | None, list[str], list[str]]:
    """Pick evenly spaced residual blocks in both nets and build the 1x1 mappers between them."""
    t_layers = default_distill_layers(teacher, n_layers) if n_layers else []
    s_layers = default_distill_layers(student, n_layers) if n_layers else []
    n = min(len(t_layers), len(s_layers))
    if n == 0:
        return None, [], []
    t_layers, s_layers = t_layers[:n], s_layers[:n]
    kw = {}
    if hasattr(student, "space"):
        kw = {"config": student.space.largest()}
    mapper = FeatureMapper(feature_channels(student, s_layers, sample, **kw), feature_channels(teacher, t_layers, sample))
    return mapper, t_layers, s_layers


def _cond(x: torch.Tensor, y: torch.Tensor, conditional: bool) -> torch.Tensor:
    return torch.cat([x, y], 1) if conditional else y


ConfigSampler = Callable[[int], ChannelConfig | None]


def _fingerprint(teacher: nn.Module, source: torch.Tensor, device: str) -> str:
    """What the teacher's outputs on `source` depend on: its weights (and buffers), the images, the device."""
    h = hashlib.sha256(device.encode())
    for name, t in teacher.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(str(tuple(source.shape)).encode())
    h.update(source.contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def teacher_target_set(teacher: nn.Module, train: ImageSet, batch_size: int = 8, crop: int | None = None,
                       device: str = "cpu", store: Path | None = None) -> ImageSet:
    """`train` with the teacher's outputs (on the whole images at load size) as paired targets, so that
    every training crop comes with the teacher's output for that crop without a teacher forward pass.

    `store`: a file that keeps the outputs between stages (one teacher pass per run, not per stage);
    used only when it was made from the same teacher weights and images, else recomputed and replaced."""
    fingerprint = _fingerprint(teacher, train.source, device) if store is not None else ""
    outs = None
    if store is not None and store.is_file():
        try:
            saved = torch.load(store, weights_only=True)
            if saved.get("fingerprint") == fingerprint:
                outs = saved["outputs"]
        except (OSError, RuntimeError, KeyError, AttributeError, pickle.UnpicklingError):
            outs = None  # unreadable cache: recompute
    if outs is None:
        dev = torch.device(device)
        teacher.eval().to(dev)
        starts = range(0, len(train), batch_size)
        outs = torch.cat([teacher(train.source[i : i + batch_size].to(dev)).cpu()
                          for i in progress(starts, len(starts), f"teacher outputs ({len(train)} images, cached once)")])
        teacher.cpu()
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_name(store.name + ".tmp")
            torch.save({"fingerprint": fingerprint, "outputs": outs}, tmp)
            tmp.replace(store)
    out = copy.copy(train)
    out.target, out.paired = outs, True
    if crop is not None:
        out.cfg = train.cfg.model_copy(update={"crop_size": crop})
    return out


def _with_crop(train: ImageSet, crop: int | None) -> ImageSet:
    if crop is None or crop == train.cfg.crop_size:
        return train
    out = copy.copy(train)
    out.cfg = train.cfg.model_copy(update={"crop_size": crop})
    return out


def train_distill(
    *,
    teacher: nn.Module,
    parts: DistillParts,
    train: ImageSet,
    cfg: DistillConfig,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    conditional_d: bool,
    sample_config: ConfigSampler | None = None,
    desc: str = "distill",
    device: str = "cpu",
    mixed_precision: str = "off",
    target_cache: dict | None = None,
    target_store: Path | None = None,
) -> dict[str, float]:
    """Run `steps` distillation steps in place on `parts`; returns the last step's losses.

    `sample_config(step)` picks the sub-network for a supernet student (None: use it as is).
    Under an initialised process group (torchrun) each rank trains on its share of every batch
    and gradients are averaged over ranks (`batch_sync.BatchSync`): the same result as one process.
    `target_cache`: a dict the caller passes to every student trained from the same teacher and
    images, so the teacher's cached outputs are computed once, not once per student;
    `target_store`: a file that keeps them between stages (see `teacher_target_set`).
    """
    sync = BatchSync.current()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    dev = torch.device(device)
    teacher.to(dev)
    if sync is not None:
        parts.discriminator = sync.prepare_discriminator(parts.discriminator, dev)
    student, D, mapper = parts.student.to(dev), parts.discriminator.to(dev), parts.mapper
    if mapper is not None:
        mapper.to(dev)
    student.train(), D.train()
    g_params = list(student.parameters()) + (list(mapper.parameters()) if mapper is not None else [])
    opt_g = torch.optim.Adam(g_params, lr=lr, betas=(cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(cfg.beta1, 0.999))
    gan = GANLoss(cfg.gan_mode)
    use_gan = cfg.lambda_gan > 0  # pure output distillation: no discriminator to train
    schedulers = []
    if cfg.lr_schedule == "cosine":
        schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, max(1, steps))
                      for o in ((opt_g, opt_d) if use_gan else (opt_g,))]
    recon = F.l1_loss if cfg.recon_loss == "l1" else F.mse_loss
    cached = cfg.cache_teacher and mapper is None and sync is None
    if cached:
        key = (id(teacher), id(train), cfg.train_crop, device)
        cache = target_cache if target_cache is not None else {}
        if key not in cache:
            cache[key] = teacher_target_set(teacher, train, crop=cfg.train_crop, device=device, store=target_store)
        train_for_stream = cache[key]
    else:
        train_for_stream = _with_crop(train, cfg.train_crop)
    stream = TrainStream(train_for_stream, batch_size, seed)
    tap_t = FeatureTap(teacher, parts.teacher_layers) if mapper is not None else None
    tap_s = FeatureTap(student, parts.student_layers) if mapper is not None else None
    log: dict[str, float] = {}
    try:
        for step in progress(range(steps), steps, desc):
            x, gt = stream.batch(step)
            if sync is not None:
                x, gt = sync.shard(x), (sync.shard(gt) if gt is not None else None)
            x = x.to(dev)
            gt = gt.to(dev) if gt is not None else None
            if cached:
                t_out, gt = gt, None  # the cached teacher output is the only target
            else:
                with torch.no_grad(), autocast(device, mixed_precision):
                    t_out = teacher(x)
            config = sample_config(step) if sample_config is not None else None
            if sync is not None:
                sync.check_same(config)
            with autocast(device, mixed_precision):
                s_out = student(x, config) if config is not None else student(x)
            loss_d = torch.zeros((), device=dev)
            if use_gan:  # discriminator: teacher output is "real", student output "fake"
                opt_d.zero_grad(set_to_none=True)
                with autocast(device, mixed_precision):
                    loss_d = 0.5 * (gan(D(_cond(x, t_out, conditional_d)), True)
                                    + gan(D(_cond(x, s_out.detach(), conditional_d)), False))
                loss_d.backward()
                if sync is not None:
                    sync.average_gradients(D.parameters())
                opt_d.step()
            # student
            opt_g.zero_grad(set_to_none=True)
            with autocast(device, mixed_precision):
                loss_gan = gan(D(_cond(x, s_out, conditional_d)), True, for_discriminator=False) if use_gan else loss_d
            s_out, t_out = s_out.float(), t_out.float()
            loss_recon = recon(s_out, t_out)
            total = cfg.lambda_gan * loss_gan + cfg.lambda_recon * loss_recon
            loss_ssim = torch.zeros((), device=dev)
            if cfg.lambda_ssim > 0:
                loss_ssim = (1 - ssim(s_out, t_out)).mean().float()
                total = total + cfg.lambda_ssim * loss_ssim
            loss_distill = torch.zeros((), device=dev)
            if mapper is not None:
                with autocast(device, mixed_precision):
                    loss_distill = mapper(tap_s.features(), tap_t.features()).float()
                total = total + cfg.lambda_distill * loss_distill
            loss_gt = torch.zeros((), device=dev)
            if gt is not None and train.paired and cfg.lambda_gt > 0:
                loss_gt = F.l1_loss(s_out, gt)
                total = total + cfg.lambda_gt * loss_gt
            total.backward()
            if sync is not None:
                sync.average_gradients(g_params)
            opt_g.step()
            for sch in schedulers:
                sch.step()
            log = {"loss_d": loss_d.item(), "loss_gan": loss_gan.item(), "loss_recon": loss_recon.item(),
                   "loss_distill": loss_distill.item(), "loss_gt": loss_gt.item(), "loss_ssim": loss_ssim.item()}
        if sync is not None:
            log = sync.average_log(log)
    finally:
        for tap in (tap_t, tap_s):
            if tap is not None:
                tap.close()
        for m in (teacher, student, D, mapper):
            if m is not None:
                m.cpu()
    return log


def supernet_sampler(space, seed: int, sandwich: bool = False) -> ConfigSampler:
    """Config for step k depends only on (seed, k): uniform sampling, or with `sandwich` the
    largest / smallest / random configs in turn."""
    def sample(step: int) -> ChannelConfig:
        if sandwich and step % 3 == 0:
            return space.largest()
        if sandwich and step % 3 == 1:
            return space.smallest()
        return space.sample(random.Random(seed * 1_000_003 + step))

    return sample
