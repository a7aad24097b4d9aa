"""The tiny GAN Compression config end to end against a real S3 (SeaweedFS), plus resume and failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compression_jobs.gan_compression.common import load_state
from compression_jobs.gan_compression.config import load_config
from compression_jobs.pipeline import STAGE_FUNCS, Context, StageFailed, completed_stages, run_pipeline, stages_for
from _unpaired_data import make_unpaired_data

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("POCKETGAN_NO_PROGRESS", "1")
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_job():
    return load_config("tiny")


@pytest.fixture(scope="module")
def full_run(tiny_job, module_registry, tmp_path_factory):
    """One uninterrupted tiny run, published to a fresh registry prefix (shared by the tests below)."""
    import os

    os.environ["POCKETGAN_NO_PROGRESS"] = "1"
    torch.set_num_threads(1)
    ctx = Context(tiny_job, tmp_path_factory.mktemp("full") / "run", registry=module_registry)
    run_pipeline(ctx)
    return ctx


def _final_weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    ft = run_dir / "finetune"
    return {d.name: load_state(d / "net_G.pth") for d in sorted(ft.iterdir()) if d.is_dir()}


def test_tiny_end_to_end_publishes_teacher_and_pareto_students(full_run, module_registry, tmp_path):
    ctx = full_run
    assert completed_stages(ctx.run_dir) == list(stages_for("gan-compression"))
    search = json.loads((ctx.run_dir / "search" / "search.json").read_text())
    budget = search["budget_macs"]
    assert budget and search["chosen"] and set(search["chosen"]) <= set(search["pareto"])
    published = json.loads((ctx.run_dir / "publish" / "published.json").read_text())
    teachers = [p for p in published if p["method"] == "teacher"]
    students = [p for p in published if p["method"] == "gan-compression"]
    # students no better than a trivial baseline are held back (tiny training: some may be)
    held = json.loads((ctx.run_dir / "state.json").read_text())["completed"]["publish"]["info"].get("held_back", [])
    assert len(teachers) == 1 and len(students) + len(held) == len(search["chosen"])
    for name in held:
        assert json.loads((ctx.run_dir / "export" / name / "manifest.json").read_text())["quality"]["below_baseline"]
    teacher = module_registry.get_manifest(teachers[0]["artifact_id"], task=ctx.job.task)
    assert teacher.quality.ssim_to_ground_truth is not None and teacher.profiles
    listed = {m.artifact_id for m in module_registry.list(ctx.job.task)}
    assert {p["artifact_id"] for p in published} <= listed
    for p in students:
        m = module_registry.get_manifest(p["artifact_id"], task=ctx.job.task)
        assert m.parent == teacher.artifact_id
        assert m.architecture.family == "mobile-resnet" and m.architecture.channel_config in search["chosen"]
        assert m.architecture.macs < teacher.architecture.macs
        assert m.architecture.macs <= budget  # the search budget holds for what is published
        q = m.quality
        assert q.dataset == "facades" and q.split == "test" and q.n_images
        assert 0 < q.ssim_to_teacher <= 1 and q.psnr_to_teacher > 0
        assert q.ssim_to_ground_truth is not None and q.psnr_to_ground_truth is not None
        assert any("FID" in n for n in q.notes) and q.fid is None
        assert {b.name for b in q.baselines} == {"identity", "mean-image", "teacher"} and q.below_baseline is False
        prof = m.profile(m.profiles[0].hardware_tag)
        assert prof is not None and prof.measurements[0].p50_ms > 0
        assert m.job["channel_config"] == m.architecture.channel_config
    # re-running publish is idempotent: same ids, nothing new created
    (tmp_path / "again").mkdir()
    again = STAGE_FUNCS["publish"](ctx, tmp_path / "again")
    assert {p["artifact_id"] for p in again["published"]} == {p["artifact_id"] for p in published}
    assert not any(p["created"] for p in again["published"])


def test_every_method_plugs_in_the_same_way_and_an_unknown_one_is_named():
    """Each method is `METHOD` in its package's stages.py, loaded by name; its stages get registered."""
    from compression_jobs.pipeline import METHOD_MODULES, get_method

    assert list(METHOD_MODULES) == ["gan-compression", "omgd", "coevolution"]
    seen: set[str] = set()
    for name, module in METHOD_MODULES.items():
        method = get_method(name)
        assert method.name == name and module == f"compression_jobs.{name.replace('-', '_')}.stages"
        assert stages_for(name) == ("train-teacher", *method.stages, "export", "publish")
        assert set(method.stage_funcs) == set(method.stages) and not seen & set(method.stages)
        seen |= set(method.stages)
        for stage, fn in method.stage_funcs.items():
            assert fn.__module__ == module and STAGE_FUNCS[stage] is fn
    with pytest.raises(ValueError, match="unknown method 'nope'; methods: gan-compression, omgd, coevolution$"):
        get_method("nope")


def test_interrupted_run_resumes_to_the_same_result(full_run, tiny_job, tmp_path, monkeypatch):
    run_dir = tmp_path / "interrupted"
    ctx = Context(tiny_job, run_dir)
    # stages_for loads the method, which registers its stages in STAGE_FUNCS (where run_stage looks them up)
    stages = tuple(s for s in stages_for("gan-compression") if s not in ("export", "publish"))
    original = STAGE_FUNCS["train-supernet"]

    def boom(c, out):
        (out / "partial.bin").write_bytes(b"half a checkpoint")
        raise RuntimeError("simulated crash")

    monkeypatch.setitem(STAGE_FUNCS, "train-supernet", boom)
    with pytest.raises(StageFailed) as err:
        run_pipeline(ctx, stages=stages)
    assert err.value.stage == "train-supernet" and "simulated crash" in str(err.value)
    assert completed_stages(run_dir) == ["train-teacher", "distill"]
    assert (run_dir / "distill" / "supernet.pth").is_file()
    assert not (run_dir / "train-supernet").exists() and not (run_dir / ".train-supernet.tmp").exists()

    monkeypatch.setitem(STAGE_FUNCS, "train-supernet", original)
    with pytest.raises(RuntimeError, match="--resume"):
        run_pipeline(ctx, stages=stages)
    run_pipeline(ctx, resume=True, stages=stages)
    assert completed_stages(run_dir) == list(stages)

    a, b = _final_weights(full_run.run_dir), _final_weights(run_dir)
    assert a.keys() == b.keys() and a
    for cfg in a:
        for k in a[cfg]:
            assert torch.equal(a[cfg][k], b[cfg][k]), (cfg, k)
    sa = json.loads((full_run.run_dir / "search" / "search.json").read_text())
    sb = json.loads((run_dir / "search" / "search.json").read_text())
    assert sa["evaluated"] == sb["evaluated"] and sa["chosen"] == sb["chosen"]


def test_stage_needs_its_inputs_and_cli_reports_the_stage(tiny_job, tmp_path):
    from compression_jobs.compress_cli import compress_cli

    runner = CliRunner()
    res = runner.invoke(compress_cli, ["search", "tiny", "--run-dir", str(tmp_path / "r")])
    assert res.exit_code != 0
    assert "stage 'search' failed" in res.output and "train-teacher" in res.output
    res = runner.invoke(compress_cli, ["run", "tiny", "--run-dir", str(tmp_path / "r2"), "--until", "train-teacher",
                                       "--set", "teacher.steps=2", "--set", "data.max_train=4"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r2" / "train-teacher" / "latest_net_G.pth").is_file()
    res = runner.invoke(compress_cli, ["run", "tiny", "--run-dir", str(tmp_path / "r2"), "--until", "train-teacher",
                                       "--set", "teacher.steps=3"])
    assert res.exit_code != 0 and "different config" in res.output or "--resume" in res.output
    res = runner.invoke(compress_cli, ["configs"])
    assert {"tiny", "small", "full"} <= set(res.output.split())


def test_given_teacher_checkpoint_is_adopted_and_bad_one_rejected(tiny_job, tmp_path):
    from compression_jobs.teacher import build_teacher

    good = tmp_path / "latest_net_G.pth"
    torch.save(build_teacher(tiny_job.teacher).state_dict(), good)
    job = load_config("tiny", {"teacher.checkpoint": str(good)})
    ctx = Context(job, tmp_path / "run")
    info = run_pipeline(ctx, until="train-teacher")["train-teacher"]
    assert info["mode"] == "given"
    assert torch.equal(load_state(ctx.run_dir / "train-teacher" / "latest_net_G.pth")["model.1.weight"],
                       load_state(good)["model.1.weight"])
    bad = tmp_path / "bad.pth"
    torch.save({"model.1.weight": torch.zeros(1)}, bad)
    with pytest.raises(StageFailed, match="cannot infer resnet hyper-parameters.*its keys \\(1\\): model.1.weight"):
        run_pipeline(Context(load_config("tiny", {"teacher.checkpoint": str(bad)}), tmp_path / "run2"))


def test_latency_budget_search_fits_a_measured_latency_model(full_run, tmp_path):
    from compression_jobs.hardware import resolve_hardware_tag
    from compression_jobs.gan_compression.stages import stage_search

    over = {"search.macs_budget_ratio": None, "search.latency_budget_ms": 1e6, "search.latency_points": 3,
            "export.profile_runs": 3}

    def search(overrides: dict, name: str) -> dict:
        # the search stage alone, on the supernet trained by the tiny run
        ctx = Context(load_config("tiny", {**over, **overrides}), full_run.run_dir)
        out = tmp_path / name
        out.mkdir()
        stage_search(ctx, out)
        return json.loads((out / "search.json").read_text())

    s = search({}, "loose")
    lm = s["latency_model"]
    assert s["hardware_tag"] == resolve_hardware_tag(None, "CPUExecutionProvider")
    assert len(lm["points"]) == 3 and all(ms > 0 for _, ms in lm["points"])
    assert all(c["predicted_latency_ms"] is not None for c in s["evaluated"])
    preds = sorted(c["predicted_latency_ms"] for c in s["evaluated"])
    if preds[0] < preds[-1]:  # a tighter budget between the smallest and largest predictions
        budget = (preds[0] + preds[-1]) / 2
        try:
            s2 = search({"search.latency_budget_ms": budget}, "tight")
        except ValueError as exc:
            # the second search measures its latency points again: on a loaded machine even the smallest
            # sub-network can then be predicted over the budget, and the search must say so, not pick one
            assert "below the smallest sub-network" in str(exc)
        else:
            by = {c["config"]: c for c in s2["evaluated"]}
            assert s2["chosen"] and all(by[c]["predicted_latency_ms"] <= budget for c in s2["chosen"])
    with pytest.raises(ValueError, match="arm64-android"):
        search({"search.hardware_tag": "arm64-android"}, "other")


def test_latency_budget_search_reads_an_op_table_file(full_run, tmp_path):
    """`search.latency_table`: a `profile-ops --out` file instead of a registry; the search obeys it,
    measures nothing, and a missing, broken or foreign file is a clear error."""
    from compression_jobs.gan_compression.stages import stage_search
    from compression_jobs.hardware import resolve_hardware_tag
    from compression_jobs.latency_table import space_keys
    from compression_jobs.models.supernet import supernet
    from registry.optables import OpTable

    job = load_config("tiny")
    space = supernet(ngf=16, n_blocks=3, multipliers=job.student.channel_choices).space
    here = resolve_hardware_tag(None, "CPUExecutionProvider")
    # a pretend table in which only the trunk width matters: predicted ms = sum of block-entry widths
    entries = {k: float(k.partition("/")[2].split("-")[-1]) for k in space_keys(space, 3)}

    def table(tag: str) -> str:
        return OpTable(hardware_tag=tag, family="mobile-resnet", resolution=job.export.resolution, threads=1,
                       runtime_version="1.0", execution_provider="CPUExecutionProvider", runs=1,
                       export={"fast": job.export.fast_graph}, design={"n_blocks": 3, "input_nc": 3, "output_nc": 3},
                       entries=entries).model_dump_json()

    (tmp_path / "here.json").write_text(table(here))
    (tmp_path / "other.json").write_text(table("phone-z"))
    (tmp_path / "broken.json").write_text("{not json")

    def search(file: str, budget: float, name: str) -> dict:
        ctx = Context(load_config("tiny", {"search.macs_budget_ratio": None, "search.latency_budget_ms": budget,
                                           "search.latency_table": str(tmp_path / file)}), full_run.run_dir)
        out = tmp_path / name
        out.mkdir()
        stage_search(ctx, out)
        assert not (out / "latency").exists()  # nothing measured here
        return json.loads((out / "search.json").read_text())

    loose = search("here.json", 1e6, "loose")
    preds = sorted(c["predicted_latency_ms"] for c in loose["evaluated"])
    assert loose["latency_model"]["kind"] == "op-table" and loose["hardware_tag"] == here
    assert preds[0] < preds[-1]
    budget = (preds[0] + preds[-1]) / 2
    tight = search("here.json", budget, "tight")
    by = {c["config"]: c for c in tight["evaluated"]}
    assert tight["chosen"] and all(by[c]["predicted_latency_ms"] <= budget for c in tight["chosen"])
    assert all(c["feasible"] == (c["predicted_latency_ms"] <= budget) for c in tight["evaluated"])
    for file, match in (("missing.json", "op table file .*missing.json"), ("broken.json", "broken.json is not a valid"),
                        ("other.json", "is for hardware tag 'phone-z'")):
        with pytest.raises(ValueError, match=match):
            search(file, 1e6, f"bad-{file}")


def test_finetune_computes_the_cached_teacher_outputs_once_for_all_chosen_configs(full_run, tmp_path, monkeypatch):
    from compression_jobs.gan_compression import distill
    from compression_jobs.gan_compression.stages import stage_finetune

    calls = []
    real = distill.teacher_target_set
    monkeypatch.setattr(distill, "teacher_target_set", lambda *a, **k: calls.append(1) or real(*a, **k))
    ctx = Context(load_config("tiny", {"distill.cache_teacher": True, "distill.distill_layers": 0,
                                       "distill.lambda_gan": 0.0, "finetune.steps": 1}), full_run.run_dir)
    info = stage_finetune(ctx, tmp_path)
    assert len(info["finetuned"]) >= 2 and len(calls) == 1


def test_cached_teacher_outputs_are_kept_between_stages_and_checked_before_use(full_run, tmp_path, monkeypatch):
    """distill.cache_teacher: one teacher pass per run (the file in run_dir/cache), not one per stage;
    a cache made by other weights or images, or a corrupt one, is recomputed, never used."""
    from compression_jobs.data import ImageSet
    from compression_jobs.gan_compression import distill
    from compression_jobs.pipeline import run_teacher, teacher_outputs_store

    ctx = Context(load_config("tiny"), full_run.run_dir)
    teacher, train = run_teacher(ctx), ImageSet(ctx.job.data, "train")
    store = tmp_path / "cache" / "t.pt"
    passes = []
    real_progress = distill.progress
    monkeypatch.setattr(distill, "progress", lambda it, n, desc: passes.append(desc) or real_progress(it, n, desc))
    first = distill.teacher_target_set(teacher, train, store=store)
    again = distill.teacher_target_set(teacher, train, store=store)
    assert len(passes) == 1 and torch.equal(first.target, again.target)
    assert torch.equal(first.target, distill.teacher_target_set(teacher, train).target)  # the same as uncached
    with torch.no_grad():
        next(teacher.parameters()).add_(0.5)  # other weights: recomputed
    changed = distill.teacher_target_set(teacher, train, store=store)
    assert len(passes) == 3 and not torch.equal(changed.target, first.target)
    store.write_bytes(b"not a torch file")
    distill.teacher_target_set(teacher, train, store=store)
    assert len(passes) == 4
    assert teacher_outputs_store(ctx).parent == ctx.run_dir / "cache"


def test_adopt_stages_shares_a_runs_stages_into_a_fresh_run_dir_only(full_run, tmp_path):
    """One supernet, several searches: the adopted stages count as completed and are marked shared."""
    from compression_jobs.pipeline import adopt_stages, read_state

    shared = ["train-teacher", "distill", "train-supernet"]
    ctx = Context(load_config("tiny", {"search.macs_budget_ratio": 0.2}), tmp_path / "arm")
    adopt_stages(full_run.run_dir, ctx, shared)
    assert completed_stages(ctx.run_dir) == shared
    assert read_state(ctx.run_dir)["completed"]["distill"]["info"]["shared_from"] == str(full_run.run_dir)
    assert (ctx.run_dir / "train-supernet" / "supernet.pth").read_bytes() == \
        (full_run.run_dir / "train-supernet" / "supernet.pth").read_bytes()
    (full_run.run_dir / "cache").mkdir(exist_ok=True)
    (full_run.run_dir / "cache" / "x.pt").write_bytes(b"cached")
    adopt_stages(full_run.run_dir, Context(ctx.job, tmp_path / "arm3"), shared)
    assert (tmp_path / "arm3" / "cache" / "x.pt").read_bytes() == b"cached"  # the run's cache comes along
    (full_run.run_dir / "cache" / "x.pt").unlink()
    run_pipeline(ctx, resume=True, until="search")  # the arm's own config continues from there
    assert completed_stages(ctx.run_dir) == shared + ["search"]
    with pytest.raises(RuntimeError, match="adopt only into a fresh run dir"):
        adopt_stages(full_run.run_dir, ctx, shared)
    with pytest.raises(RuntimeError, match=r"has not completed stage\(s\) 'finetune'"):
        adopt_stages(tmp_path / "arm", Context(ctx.job, tmp_path / "arm2"), ["search", "finetune"])


def test_unpaired_cyclegan_data_runs_through_finetune(tmp_path):
    """CycleGAN layout: teacher from trainA/trainB, unconditional D, no ground-truth term."""
    make_unpaired_data(tmp_path / "data")
    job = load_config("tiny", {"data.root": str(tmp_path / "data"), "data.layout": "unpaired", "data.direction": "AtoB",
                               "data.load_size": 36, "data.crop_size": 32, "data.max_train": None,
                               "data.max_test": None, "teacher.steps": 4, "distill.steps": 4, "supernet.steps": 4,
                               "finetune.steps": 2, "search.population": 3, "search.generations": 1,
                               "search.max_publish": 1})
    ctx = Context(job, tmp_path / "run")
    run_pipeline(ctx, until="finetune")
    info = json.loads((ctx.run_dir / "state.json").read_text())["completed"]
    assert info["train-teacher"]["info"]["mode"] == "cyclegan"
    assert info["distill"]["info"]["losses"]["loss_gt"] == 0.0
    assert len(_final_weights(ctx.run_dir)) == 1


def test_progress_off_a_terminal_prints_a_line_every_interval_and_one_at_the_end(monkeypatch, capsys) -> None:
    """Logs get readable progress: periodic lines with a count and an ETA, no carriage returns."""
    import itertools

    from compression_jobs.gan_compression import common

    clock = itertools.count(0.0, 11.0)  # each step "takes" 11 s
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    monkeypatch.delenv("POCKETGAN_NO_PROGRESS", raising=False)
    monkeypatch.setattr(common, "_bars_off", lambda: True)
    assert list(common.progress(range(9), 9, "distill")) == list(range(9))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and len(lines) == 4, lines  # after 33, 66 and 99 s, then the end
    assert lines[0].strip().startswith("distill: 3/9 after 33 s, ~66 s left") and "9 done in" in lines[-1]
    monkeypatch.setenv("POCKETGAN_NO_PROGRESS", "1")
    assert list(common.progress(range(3), 3, "quiet")) == [0, 1, 2] and capsys.readouterr().err == ""
