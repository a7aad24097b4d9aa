"""Train a pix2pix (paired) or CycleGAN (unpaired) teacher with the standard losses.

No pretrained weights can be downloaded, so the compression pipeline starts by training one.
The result is saved as ``latest_net_G.pth`` (pix2pix key layout, loadable by the reference
code) and ``latest_net_D.pth``; any compatible ``latest_net_G.pth`` can be used instead.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_jobs.data import ImageSet, TrainStream
from compression_jobs.gan_compression.common import autocast, load_state, progress, save_state
from compression_jobs.gan_compression.config import JobConfig, TeacherConfig
from compression_jobs.losses import GANLoss
from compression_jobs.models.discriminator import PatchGANDiscriminator
from compression_jobs.models.resnet import ResnetGenerator
from compression_jobs.models.unet import UnetGenerator

G_NAME = "latest_net_G.pth"
D_NAME = "latest_net_D.pth"


def build_teacher(cfg: TeacherConfig, input_nc: int = 3, output_nc: int = 3) -> nn.Module:
    if cfg.arch == "resnet":
        return ResnetGenerator(input_nc, output_nc, ngf=cfg.ngf, norm=cfg.norm, n_blocks=cfg.n_blocks)
    return UnetGenerator(input_nc, output_nc, num_downs=cfg.num_downs, ngf=cfg.ngf, norm=cfg.norm)


def build_discriminator(cfg: TeacherConfig, input_nc: int) -> PatchGANDiscriminator:
    return PatchGANDiscriminator(input_nc=input_nc, ndf=cfg.ndf, n_layers=cfg.n_layers_d, norm=cfg.norm_d)


def load_teacher(cfg: TeacherConfig, path: Path, input_nc: int = 3, output_nc: int = 3) -> nn.Module:
    """Build the configured architecture and load a checkpoint strictly (weights_only)."""
    from compression_jobs.checkpoints import load_state_dict_strict

    net = build_teacher(cfg, input_nc, output_nc)
    return load_state_dict_strict(net, load_state(path), source=str(path)).eval()


def _adam(params, lr: float, beta1: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999))


def _linear_decay(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant for the first half, then linear decay to 0 (the pix2pix schedule, in steps)."""
    half = max(1, steps // 2)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < half else max(0.0, 1.0 - (s - half) / max(1, steps - half)))


def train_pix2pix(job: JobConfig, train: ImageSet, out_dir: Path) -> dict:
    """Conditional GAN (D sees input|output) + λ·L1 to ground truth."""
    cfg = job.teacher
    nc_in, nc_out = job.data.input_nc, job.data.output_nc
    dev = torch.device(job.device)
    G = build_teacher(cfg, nc_in, nc_out).to(dev)
    D = build_discriminator(cfg, nc_in + nc_out).to(dev)
    gan = GANLoss(cfg.gan_mode)
    opt_g, opt_d = _adam(G.parameters(), cfg.lr, cfg.beta1), _adam(D.parameters(), cfg.lr, cfg.beta1)
    sch = [_linear_decay(opt_g, cfg.steps), _linear_decay(opt_d, cfg.steps)]
    stream = TrainStream(train, cfg.batch_size, job.seed)
    G.train(), D.train()
    log = {}
    for step in progress(range(cfg.steps), cfg.steps, "train-teacher (pix2pix)"):
        real_a, real_b = (t.to(dev) for t in stream.batch(step))
        with autocast(job.device, job.mixed_precision):
            fake_b = G(real_a)
        # D step
        opt_d.zero_grad(set_to_none=True)
        with autocast(job.device, job.mixed_precision):
            loss_d = 0.5 * (
                gan(D(torch.cat([real_a, fake_b.detach()], 1)), False) + gan(D(torch.cat([real_a, real_b], 1)), True)
            )
        loss_d.backward()
        opt_d.step()
        # G step
        opt_g.zero_grad(set_to_none=True)
        with autocast(job.device, job.mixed_precision):
            loss_g_gan = gan(D(torch.cat([real_a, fake_b], 1)), True, for_discriminator=False)
        loss_l1 = F.l1_loss(fake_b.float(), real_b)
        (loss_g_gan + cfg.lambda_l1 * loss_l1).backward()
        opt_g.step()
        for s in sch:
            s.step()
        log = {"loss_d": loss_d.item(), "loss_g_gan": loss_g_gan.item(), "loss_l1": loss_l1.item()}
    save_state(G.cpu(), out_dir / G_NAME)
    save_state(D.cpu(), out_dir / D_NAME)
    return log


def train_cyclegan(job: JobConfig, train: ImageSet, out_dir: Path) -> dict:
    """CycleGAN: two generators/discriminators, GAN + λ_cyc·cycle L1 + λ_id·identity L1."""
    cfg = job.teacher
    if train.target is None:
        raise ValueError("CycleGAN teacher needs images of both domains (trainA/ and trainB/)")
    nc = job.data.input_nc
    dev = torch.device(job.device)
    G_ab, G_ba = build_teacher(cfg, nc, nc).to(dev), build_teacher(cfg, nc, nc).to(dev)
    D_b, D_a = build_discriminator(cfg, nc).to(dev), build_discriminator(cfg, nc).to(dev)
    gan = GANLoss(cfg.gan_mode)
    opt_g = _adam(itertools.chain(G_ab.parameters(), G_ba.parameters()), cfg.lr, cfg.beta1)
    opt_d = _adam(itertools.chain(D_a.parameters(), D_b.parameters()), cfg.lr, cfg.beta1)
    sch = [_linear_decay(opt_g, cfg.steps), _linear_decay(opt_d, cfg.steps)]
    stream = TrainStream(train, cfg.batch_size, job.seed)
    log = {}
    for step in progress(range(cfg.steps), cfg.steps, "train-teacher (cyclegan)"):
        real_a, real_b = (t.to(dev) for t in stream.batch(step))
        fake_b, fake_a = G_ab(real_a), G_ba(real_b)
        opt_g.zero_grad(set_to_none=True)
        l_gan = gan(D_b(fake_b), True, False) + gan(D_a(fake_a), True, False)
        l_cyc = F.l1_loss(G_ba(fake_b), real_a) + F.l1_loss(G_ab(fake_a), real_b)
        l_id = F.l1_loss(G_ab(real_b), real_b) + F.l1_loss(G_ba(real_a), real_a)
        (l_gan + cfg.lambda_cycle * l_cyc + cfg.lambda_cycle * cfg.lambda_identity * l_id).backward()
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        l_d = 0.5 * (gan(D_b(real_b), True) + gan(D_b(fake_b.detach()), False))
        l_d = l_d + 0.5 * (gan(D_a(real_a), True) + gan(D_a(fake_a.detach()), False))
        l_d.backward()
        opt_d.step()
        for s in sch:
            s.step()
        log = {"loss_d": l_d.item(), "loss_g_gan": l_gan.item(), "loss_cycle": l_cyc.item()}
    save_state(G_ab.cpu(), out_dir / G_NAME)
    save_state(D_b.cpu(), out_dir / D_NAME)
    save_state(G_ba.cpu(), out_dir / "latest_net_G_B.pth")
    save_state(D_a.cpu(), out_dir / "latest_net_D_A.pth")
    return log


def train_teacher(job: JobConfig, out_dir: Path) -> dict:
    """Train (paired → pix2pix, unpaired → CycleGAN) and write latest_net_G.pth / latest_net_D.pth."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train = ImageSet(job.data, "train")
    log = train_pix2pix(job, train, out_dir) if train.paired else train_cyclegan(job, train, out_dir)
    info = {"mode": "pix2pix" if train.paired else "cyclegan", "steps": job.teacher.steps, "final_losses": log,
            "n_train": len(train)}
    (out_dir / "teacher.json").write_text(json.dumps(info, indent=2))
    return info
