"""Bring your own teacher: one checkpoint loader for export, `macs --checkpoint` and every compression
method (`compress run --teacher`), with the real vintagify CycleGAN teacher and reference key layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compression_jobs.checkpoints import CheckpointError, resolve_generator
from compression_jobs.compress_cli import compress_cli
from compression_jobs.models import resnet_generator
from compression_jobs.pretrained import VINTAGIFY_INSTALL, vintagify_teacher


@pytest.fixture(scope="module")
def vintagify() -> Path:
    path = vintagify_teacher()  # found through importlib.resources, without importing vintagify
    if path is None:
        pytest.fail(f"the real teacher is missing: scripts/setup installs it ({VINTAGIFY_INSTALL})")
    return path


def _random_resnet(norm: str, ngf: int = 8, n_blocks: int = 3) -> torch.nn.Module:
    net = resnet_generator(ngf=ngf, n_blocks=n_blocks, norm=norm)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) * 0.4 - 0.2)
    return net.eval()


@pytest.mark.parametrize("prefix,rename_block", [
    ("", False),  # junyanz reference: model.N.conv_block.*
    ("", True),  # vintagify: model.N.block.*
    ("module.", True),  # DataParallel
    ("netG.", False),  # saved from a model wrapper
    ("module.netG_A.", True),
])
def test_key_layouts_load_strict_with_norm_and_sizes_inferred(tmp_path, prefix, rename_block):
    ref = _random_resnet("instance-affine")
    state = {}
    for k, v in ref.state_dict().items():
        if rename_block:
            k = k.replace(".conv_block.", ".block.")
        state[prefix + k] = v
    path = tmp_path / "g.pth"
    torch.save(state, path)
    model, spec = resolve_generator(path)
    assert spec == {"arch": "resnet", "ngf": 8, "n_blocks": 3, "norm": "instance-affine", "use_dropout": False,
                    "input_nc": 3, "output_nc": 3}
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-6)


def test_mismatch_error_lists_every_key_and_what_was_inferred(tmp_path):
    state = dict(_random_resnet("instance").state_dict())
    dropped = [k for k in state if k.startswith("model.10.conv_block")]  # a whole residual block's convs
    for k in dropped[:2]:
        state.pop(k)
    for i in range(9):
        state[f"extra.{i}.weight"] = torch.zeros(1)
    path = tmp_path / "g.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        resolve_generator(path, n_blocks=3)
    msg = str(info.value)
    assert "inferred from the checkpoint: ngf=8" in msg and "norm=instance" in msg and "given: n_blocks=3" in msg
    assert all(f"extra.{i}.weight" in msg for i in range(9))  # nothing cut off
    assert all(k in msg for k in dropped[:2])
    assert len(msg.splitlines()) >= 3


def test_vintagify_teacher_macs_from_the_checkpoint(vintagify):
    from compression_jobs.cli import macs_cli
    from registry.errors import InvalidInput

    res = CliRunner().invoke(macs_cli, ["--checkpoint", str(vintagify), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["architecture"] == {"arch": "resnet", "ngf": 64, "n_blocks": 9, "norm": "instance-affine",
                                   "use_dropout": False, "input_nc": 3, "output_nc": 3}
    assert out["gmacs"] == pytest.approx(56.8, abs=0.05)  # the figure the data README gives for this teacher
    bad = CliRunner().invoke(macs_cli, ["--checkpoint", str(vintagify), "--n-blocks", "6"])
    assert isinstance(bad.exception, InvalidInput)  # pocketgan's main turns it into one error and exit code 2
    msg = str(bad.exception)
    assert "given: n_blocks=6" in msg and "unexpected keys (" in msg and "model.26.weight" in msg


TINY_VINTAGIFY = [
    "--set", "task=facades-photo2vintage", "--set", "data.direction=AtoB", "--set", "data.targets=false",
    "--set", "data.load_size=40", "--set", "data.crop_size=32", "--set", "data.max_train=8", "--set", "data.max_test=4",
    "--set", "distill.steps=2", "--set", "supernet.steps=2", "--set", "finetune.steps=2",
    "--set", "search.population=4", "--set", "search.generations=1", "--set", "omgd.steps=2",
    "--set", "coevolution.generations=1", "--set", "coevolution.population=4", "--set", "coevolution.eval_images=2",
    "--set", "coevolution.finetune_steps=2", "--set", "export.resolution=32", "--set", "export.profile=false",
]
"""Photos (left halves of the embedded facades) only: the vintagify teacher's outputs are the pseudo-pairs."""


@pytest.mark.parametrize("method", ["gan-compression", "omgd", "coevolution"])
def test_every_method_compresses_the_real_teacher_from_unpaired_photos(vintagify, tmp_path, method, monkeypatch):
    monkeypatch.setenv("POCKETGAN_NO_PROGRESS", "1")
    run = tmp_path / "run"
    res = CliRunner().invoke(compress_cli, ["run", "tiny", "--teacher", str(vintagify), "--run-dir", str(run),
                                            "--set", f"method={method}", "--set", "publish.enabled=false",
                                            *TINY_VINTAGIFY])
    assert res.exit_code == 0, res.output
    state = json.loads((run / "state.json").read_text())
    teacher = state["completed"]["train-teacher"]["info"]
    assert teacher["mode"] == "given" and teacher["architecture"]["norm"] == "instance-affine"
    assert "--teacher" not in res.output
    export = state["completed"]["export"]["info"]
    assert set(export["baselines"]) == {"identity", "mean-image"}  # photos in, photos out: identity applies
    assert len(export["artifacts"]) >= 2
    report = (run / "export" / "report.md").read_text()
    assert "baseline: identity" in report and "56.80 G" in report
    if method == "omgd":
        assert state["completed"]["omgd"]["info"]["pseudo_pairs_from_teacher"] is True


def test_config_teacher_fields_override_what_the_checkpoint_implies(vintagify, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(compress_cli, ["train-teacher", "tiny", "--teacher", str(vintagify), "--run-dir", str(run),
                                            "--set", "teacher.norm=instance", *TINY_VINTAGIFY])
    assert res.exit_code != 0
    assert "given: norm=instance" in res.output and "unexpected keys (" in res.output and "model.2.weight" in res.output
    assert "stage 'train-teacher' failed" in res.output


def test_teacher_option_drops_the_configs_teacher_architecture_but_keeps_set_overrides(vintagify):
    from compression_jobs.compare import job_for
    from compression_jobs.gan_compression.config import load_config

    tiny = load_config("tiny")
    assert tiny.teacher.arch_overrides()["ngf"] == 16  # the teacher tiny would train
    job = load_config("tiny", {"teacher.norm": "instance-affine"}, teacher=vintagify)
    assert job.teacher.checkpoint == str(vintagify)
    assert job.teacher.arch_overrides() == {"norm": "instance-affine"}  # only what --set gave
    # compare switches methods on a copy: defaults must not turn into overrides of the checkpoint
    assert job_for(job, "omgd").teacher.arch_overrides() == {"norm": "instance-affine"}
