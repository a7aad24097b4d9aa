"""Co-evolutionary channel pruning: real channel removal, the GA, and the method end to end against real S3."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compression_jobs.coevolution.genetic import GAParams, evolve
from compression_jobs.coevolution.prune import ChannelGroups, PrunedWidths, build_pruned, masked, prune_generator
from compression_jobs.coevolution.search import FitnessWeights, Side, coevolve
from compression_jobs.counting import count_macs, count_params
from compression_jobs.models.discriminator import PatchGANDiscriminator
from compression_jobs.models.resnet import ResnetGenerator
from _unpaired_data import make_unpaired_data

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("POCKETGAN_NO_PROGRESS", "1")
    torch.set_num_threads(1)


def _generator(norm: str, seed: int = 0, n_blocks: int = 3, dropout: bool = False) -> ResnetGenerator:
    """A small ResNet generator with non-trivial norm parameters/statistics (so slicing them matters)."""
    torch.manual_seed(seed)
    g = ResnetGenerator(ngf=8, n_blocks=n_blocks, norm=norm, use_dropout=dropout)
    for m in g.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.uniform_(m.weight, 0.5, 2.0)
            nn.init.uniform_(m.bias, -0.5, 0.5)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return g.eval()


def _random_code(groups: ChannelGroups, keep: float, seed: int) -> torch.Tensor:
    return groups.repair(torch.rand(groups.n_bits, generator=torch.Generator().manual_seed(seed)) < keep)


@pytest.mark.parametrize("norm,dropout", [("instance", False), ("instance-affine", False), ("batch", True)])
def test_pruned_generator_has_fewer_real_channels_and_matches_its_masked_counterpart(norm, dropout):
    g = _generator(norm, dropout=dropout)
    groups = ChannelGroups(g)
    masks = groups.masks(_random_code(groups, 0.5, seed=3))
    pruned = prune_generator(g, masks).eval()

    # the weight tensors really shrink, to exactly the kept channels
    w = groups.widths(masks)
    m = pruned.model
    assert m[1].weight.shape[0] == w.stem < 8 and m[4].weight.shape[:2] == (w.down1, w.stem)
    assert m[7].weight.shape[:2] == (w.stream, w.down1) and w.stream < 32
    for i, inner in enumerate(w.blocks):
        cb = m[10 + i].conv_block
        convs = [c for c in cb if isinstance(c, nn.Conv2d)]
        assert convs[0].weight.shape[:2] == (inner, w.stream) and convs[1].weight.shape[:2] == (w.stream, inner)
    assert m[13].weight.shape[:2] == (w.stream, w.up1) and m[16].weight.shape[:2] == (w.up1, w.up2)  # ConvT: (in, out)
    assert m[-2].weight.shape[:2] == (3, w.up2)
    assert count_params(pruned) < count_params(g) and count_macs(pruned, 64) < count_macs(g, 64)
    assert str(pruned.config) == str(w)

    # same output as the full network with the pruned channels zeroed (and differs from the unpruned one)
    x = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        y_pruned = pruned(x)
        full = g(x)
        with masked(g, masks):
            y_masked = g(x)
    assert (y_pruned - y_masked).abs().max().item() < 1e-5
    assert (full - y_masked).abs().max().item() > 1e-3

    # a saved compact generator reloads from its channel config string alone
    again = build_pruned(_generator(norm, seed=9, dropout=dropout), str(w)).eval()
    again.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), y_pruned)


def test_all_ones_code_is_the_teacher_and_stream_pruning_can_be_turned_off():
    g = _generator("instance")
    groups = ChannelGroups(g)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    whole = prune_generator(g, groups.masks(torch.ones(groups.n_bits, dtype=torch.bool)))
    with torch.no_grad():
        assert torch.allclose(whole(x), g(x), atol=1e-6)
    no_stream = ChannelGroups(g, prune_stream=False)
    assert no_stream.n_bits == groups.n_bits - 32
    w = no_stream.widths(no_stream.masks(_random_code(no_stream, 0.3, seed=1)))
    assert w.stream == 32 and max(w.blocks) < 32
    assert PrunedWidths.parse(str(w)) == w
    # an all-zero code is repaired to keep one channel per group (an empty layer cannot be exported)
    empty = groups.widths(groups.masks(groups.repair(torch.zeros(groups.n_bits, dtype=torch.bool))))
    assert (empty.stem, empty.down1, empty.stream, empty.up1, empty.up2) == (1, 1, 1, 1, 1) and empty.blocks == [1, 1, 1]


def test_ga_with_elitism_never_loses_its_best_and_finds_a_separable_optimum():
    """Weighted Hamming distance to a hidden code: the GA reaches 0 on every seed; random sampling with
    the same number of evaluations does not come close (2^48 codes)."""
    n = 48
    target = torch.rand(n, generator=torch.Generator().manual_seed(5)) < 0.5
    weight = torch.linspace(1, 2, n)

    def loss(code: torch.Tensor) -> float:
        return float(((code != target).float() * weight).sum())

    params = GAParams(population=20, elite=2, mutate_prob=1 / n)
    generations = 200
    for seed in range(3):
        pop = evolve(n, loss, generations, params, seed=seed)
        h = pop.history
        assert len(h) == generations + 1
        assert all(a >= b for a, b in zip(h, h[1:])), "elitism: the best loss must never increase"
        assert h[0] > 10 and h[-1] == 0.0 and torch.equal(pop.best[0], target)
    g = torch.Generator().manual_seed(0)
    random_best = min(loss(torch.rand(n, generator=g) < 0.5) for _ in range(params.population * (generations + 1)))
    assert random_best > 5
    # same seed, same run
    a, b = evolve(n, loss, 20, params, seed=7), evolve(n, loss, 20, params, seed=7)
    assert a.history == b.history and torch.equal(a.best[0], b.best[0])


def test_unpaired_coevolution_scores_each_side_through_the_others_best():
    """Two populations (A→B, B→A) with cycle consistency; a MACs budget is met by the best code."""
    torch.manual_seed(0)
    g_ab, g_ba = _generator("instance", seed=1, n_blocks=2), _generator("instance", seed=2, n_blocks=2)
    d_b, d_a = PatchGANDiscriminator(3, ndf=8, n_layers=2, norm="batch"), PatchGANDiscriminator(3, ndf=8, n_layers=2, norm="batch")
    x_a, x_b = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    sides = [Side("AtoB", g_ab, d_b.eval(), x_a, False, ChannelGroups(g_ab)),
             Side("BtoA", g_ba, d_a.eval(), x_b, False, ChannelGroups(g_ba))]
    budget = count_macs(g_ab, 256) // 3
    weights = FitnessWeights(gamma=0.5, budget_macs=budget)
    params = GAParams(population=6, elite=1, mutate_prob=0.05, init_keep=(0.1, 1.0))
    result = coevolve(sides, params, generations=3, weights=weights, seed=0)
    assert [s.name for s in result.sides] == ["AtoB", "BtoA"] and result.evaluated == 2 * 6 * 4
    for side, res in zip(sides, result.sides):
        assert len(res.history) == 4 and res.best.macs <= budget and res.best.dis > 0
        assert res.best.params_fraction < 1
        assert res.channel_config == str(side.groups.widths(side.groups.masks(torch.tensor(res.best_code))))
    # the cycle term really goes through the partner: a different partner changes A→B's loss
    code = torch.tensor(result.sides[0].best_code)
    with_teacher = sides[0].terms(code, weights, g_ba).rec
    with_pruned = sides[0].terms(code, weights, sides[1].prune(torch.tensor(result.sides[1].best_code))).rec
    assert with_teacher != with_pruned


def test_unpaired_data_evolves_two_populations_in_the_pipeline(tmp_path):
    """CycleGAN layout: the coevolve stage picks up the teacher's second generator and discriminator."""
    from compression_jobs.gan_compression.config import load_config
    from compression_jobs.pipeline import Context, run_pipeline

    make_unpaired_data(tmp_path / "data")
    job = load_config("tiny", {"method": "coevolution", "data.root": str(tmp_path / "data"), "data.layout": "unpaired",
                               "data.direction": "AtoB", "data.load_size": 36, "data.crop_size": 32,
                               "data.max_train": None, "data.max_test": None, "teacher.steps": 4,
                               "coevolution.population": 4, "coevolution.generations": 1,
                               "coevolution.finetune_steps": 2, "coevolution.eval_images": 4})
    ctx = Context(job, tmp_path / "run")
    run_pipeline(ctx, until="prune-finetune")
    info = json.loads((ctx.run_dir / "state.json").read_text())["completed"]
    assert info["train-teacher"]["info"]["mode"] == "cyclegan"
    coevolve_info = info["coevolve"]["info"]
    assert set(coevolve_info["history"]) == {"AtoB", "BtoA"}
    assert not any("discriminator" in n or "B→A" in n for n in coevolve_info["notes"])
    assert info["prune-finetune"]["info"]["losses"]["loss_gt"] == 0.0


def test_tiny_coevolution_run_publishes_a_smaller_pruned_generator(module_registry, tmp_path):
    from compression_jobs.gan_compression.config import load_config
    from compression_jobs.pipeline import Context, completed_stages, run_pipeline, stages_for

    job = load_config("tiny", {"method": "coevolution", "coevolution.population": 6, "coevolution.generations": 3,
                               "coevolution.finetune_steps": 10})
    ctx = Context(job, tmp_path / "run", registry=module_registry, publish_all=True)  # tiny: may be below baseline
    run_pipeline(ctx)
    assert completed_stages(ctx.run_dir) == list(stages_for("coevolution"))
    assert stages_for("coevolution") == ("train-teacher", "coevolve", "prune-finetune", "export", "publish")
    search = json.loads((ctx.run_dir / "coevolve" / "coevolve.json").read_text())
    history = search["result"]["sides"][0]["history"]
    assert len(search["result"]["sides"]) == 1 and len(history) == 4  # paired: one population
    assert search["cost"]["within_budget"] and search["weights"]["lambda_dis"] > 0  # the teacher's D was used
    published = json.loads((ctx.run_dir / "publish" / "published.json").read_text())
    teacher_id = next(p["artifact_id"] for p in published if p["method"] == "teacher")
    students = [p for p in published if p["method"] == "coevolution"]
    assert len(students) == 1
    teacher = module_registry.get_manifest(teacher_id, task=job.task)
    m = module_registry.get_manifest(students[0]["artifact_id"], task=job.task)
    assert m.method == "coevolution" and m.parent == teacher.artifact_id
    assert m.architecture.channel_config == search["channel_config"] == m.job["channel_config"]
    assert m.architecture.macs == search["cost"]["macs"] < teacher.architecture.macs
    assert m.architecture.macs <= search["cost"]["budget_macs"]
    assert m.architecture.params < teacher.architecture.params
    assert 0 < m.quality.ssim_to_teacher <= 1 and m.quality.psnr_to_teacher > 0 and m.profiles
    assert {a.artifact_id for a in module_registry.list(job.task)} >= {teacher_id, m.artifact_id}
    # the search is deterministic given the seed: re-running the stage picks the same code
    from compression_jobs.pipeline import run_stage

    run_stage(ctx, "coevolve")
    again = json.loads((ctx.run_dir / "coevolve" / "coevolve.json").read_text())
    assert again["result"]["sides"][0]["best_code"] == search["result"]["sides"][0]["best_code"]
    assert again["result"]["sides"][0]["history"] == history
