"""Supernet training under torchrun: 2 CPU ranks (gloo) == 1 process with the same effective batch.

A tiny run (tiny config, 2 teacher and 2 distill steps, instance-norm discriminator) is trained
for a few supernet steps twice from the same distill outputs: once by the ordinary one-process
stage (`run_stage`), once by `torchrun --nproc_per_node 2 -m compression_jobs.gan_compression.ddp`.

What "the same" means, measured: every tensor agrees to ATOL (40x smaller than one Adam step of
lr 2e-4), except conv biases directly normalised away by an instance norm. Their true gradient is
exactly zero, so what they receive is float rounding noise, which Adam scales up to ±lr per step
differently in the two runs. The test proves each such bias is irrelevant (a +1 shift changes no
output) and that the two supernets give the same images for several sub-networks.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compression_jobs.gan_compression.config import load_config
from compression_jobs.gan_compression.ddp import BatchSync
from compression_jobs.models.supernet import supernet
from compression_jobs.pipeline import Context, run_stage
from compression_jobs.teacher import build_discriminator

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
OVERRIDES = {"teacher.steps": 2, "distill.steps": 2, "supernet.steps": 4, "teacher.norm_d": "instance",
             "distill.batch_size": 4}
ATOL = 5e-6
FILES = ("supernet.pth", "mapper.pth", "net_D.pth")

pytestmark = pytest.mark.timeout(300)


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'base', 'one', 'two'}: distill outputs, then train-supernet by 1 process and by 2 ranks."""
    root = tmp_path_factory.mktemp("ddp")
    job = load_config("tiny", OVERRIDES)
    base = root / "base"
    for stage in ("train-teacher", "distill"):
        run_stage(Context(job, base), stage)
    one, two = root / "one", root / "two"
    shutil.copytree(base, one, symlinks=True)
    shutil.copytree(base, two, symlinks=True)
    run_stage(Context(job, one), "train-supernet")

    sets = [a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "POCKETGAN_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "compression_jobs.gan_compression.ddp",
         "tiny", "--run-dir", str(two), *sets],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 ranks (gloo), effective batch 4" in proc.stderr
    return {"base": base, "one": one, "two": two}


def _models(job):
    sn = supernet(ngf=job.student.ngf, n_blocks=job.student.n_blocks, multipliers=job.student.channel_choices)
    d = build_discriminator(job.teacher, job.data.input_nc + job.data.output_nc)
    return sn.eval(), d.eval()


def _normalised_away(model: torch.nn.Module, key: str, run, x: torch.Tensor) -> bool:
    """Whether shifting parameter `key` by +1 leaves the model's output unchanged."""
    ref = run(model, x)
    param = dict(model.named_parameters())[key]
    with torch.no_grad():
        param += 1.0
        moved = run(model, x)
        param -= 1.0
    return torch.allclose(ref, moved, atol=1e-4)


def test_two_ranks_train_the_same_supernet_as_one_process(runs: dict[str, Path]) -> None:
    job = load_config("tiny", OVERRIDES)
    x = torch.rand(2, job.data.input_nc, job.data.crop_size, job.data.crop_size) * 2 - 1
    sn, disc = _models(job)
    space = sn.space
    configs = [space.largest(), space.smallest(), space.sample(random.Random(7))]
    runners = {
        "supernet.pth": (sn, lambda m, inp: torch.cat([m(inp, c) for c in configs])),
        "net_D.pth": (disc, lambda m, inp: m(torch.cat([inp, inp], 1))),
    }
    for name in FILES:
        one = _load(runs["one"] / "train-supernet" / name)
        two = _load(runs["two"] / "train-supernet" / name)
        start = _load(runs["base"] / "distill" / name)
        assert one.keys() == two.keys()
        moved = max((one[k] - start[k]).abs().max().item() for k in one)
        assert moved > 100 * ATOL, f"{name}: training did not move the weights ({moved})"
        differ = [k for k in one if not torch.allclose(one[k], two[k], rtol=0, atol=ATOL)]
        if name not in runners:
            assert not differ, f"{name}: {differ}"
            continue
        model, run = runners[name]
        model.load_state_dict(one)
        with torch.no_grad():
            for key in differ:
                assert key.endswith("bias") and _normalised_away(model, key, run, x), f"{name}: {key} differs"
            out_one = run(model, x)
            model.load_state_dict(two)
            out_two = run(model, x)
        assert torch.allclose(out_one, out_two, rtol=0, atol=1e-4), (out_one - out_two).abs().max()


def test_two_ranks_leave_the_run_dir_like_one_process(runs: dict[str, Path]) -> None:
    from compression_jobs.pipeline import completed_stages

    assert completed_stages(runs["two"]) == completed_stages(runs["one"])
    assert sorted(p.name for p in (runs["two"] / "train-supernet").iterdir()) == sorted(FILES)
    assert not list(runs["two"].glob(".*.tmp"))


def test_shard_splits_the_global_batch_evenly() -> None:
    batch = torch.arange(8).reshape(4, 2)
    assert torch.equal(torch.cat([BatchSync(r, 2).shard(batch) for r in range(2)]), batch)
    assert torch.equal(BatchSync(1, 2).shard(batch), batch[2:])
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        BatchSync(0, 3).shard(batch)
