"""`compress compare` on a cut-down tiny config against the real S3 (SeaweedFS): one teacher shared by
GAN Compression and OMGD, INT8 of each winner, report + plot, everything published; OMGD's run is
also the OMGD end-to-end test. Co-evolution is made unavailable here (its module path points
nowhere) to check that the comparison says so instead of inventing numbers; it has its own tests.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from compression_jobs.gan_compression.config import load_config
from compression_jobs.pipeline import completed_stages

pytestmark = pytest.mark.timeout(900)

SMALLER = {"teacher.steps": 20, "distill.steps": 6, "supernet.steps": 8, "finetune.steps": 4,
           "search.population": 4, "search.generations": 1, "search.max_publish": 1,
           "data.max_train": 8, "data.max_test": 4, "export.profile_runs": 3}


@pytest.fixture(scope="module")
def compared(module_registry, tmp_path_factory):
    from compression_jobs import pipeline
    from compression_jobs.compare import run_compare

    os.environ["POCKETGAN_NO_PROGRESS"] = "1"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = pipeline.METHOD_MODULES["coevolution"]
    pipeline.METHOD_MODULES["coevolution"] = "compression_jobs.no_such_method_for_this_test"
    try:
        root = tmp_path_factory.mktemp("compare")
        # tiny training: students may not beat the trivial baselines; publish them anyway to test publishing
        result = run_compare(load_config("tiny", SMALLER), root, registry=module_registry, publish_all=True)
    finally:
        pipeline.METHOD_MODULES["coevolution"] = saved
        torch.set_num_threads(threads)
    return result, root


def test_one_teacher_is_shared_by_every_method(compared):
    result, root = compared
    gc, omgd = (json.loads((root / m / "state.json").read_text()) for m in ("gan-compression", "omgd"))
    assert "shared_from" not in gc["completed"]["train-teacher"]["info"]
    assert omgd["completed"]["train-teacher"]["info"]["shared_from"] == str(root / "gan-compression")
    assert omgd["method"] == "omgd"
    assert completed_stages(root / "omgd") == ["train-teacher", "omgd", "export", "publish"]
    same = [(root / m / "train-teacher" / "latest_net_G.pth").read_bytes() for m in ("gan-compression", "omgd")]
    assert same[0] == same[1]
    teacher_ids = {json.loads((root / m / "export" / "artifacts.json").read_text())["teacher"]
                   for m in ("gan-compression", "omgd")}
    assert teacher_ids == {result.teacher_id}


def test_omgd_student_is_published_with_teacher_as_parent(compared, module_registry):
    result, root = compared
    job = load_config("tiny")
    omgd = next(r for r in result.methods if r.method == "omgd")
    assert omgd.available and len(omgd.students) == 1 and omgd.train_seconds > 0
    m = module_registry.get_manifest(omgd.students[omgd.winner], task=job.task)
    assert m.method == "omgd" and m.parent == result.teacher_id
    assert m.architecture.family == "mobile-resnet" and m.architecture.channel_config == omgd.winner
    assert m.architecture.macs <= result.budget_macs
    assert 0 < m.quality.ssim_to_teacher <= 1 and m.quality.psnr_to_teacher > 0
    assert m.quality.ssim_to_ground_truth is not None and m.profiles
    info = json.loads((root / "omgd" / "omgd" / "omgd.json").read_text())
    assert info["steps"] == SMALLER["distill.steps"] + SMALLER["supernet.steps"] + SMALLER["finetune.steps"]
    assert info["student_macs"] == m.architecture.macs


def test_int8_of_each_winner_is_measured_and_published(compared, module_registry):
    result, root = compared
    listed = {a.artifact_id: a for a in module_registry.list(load_config("tiny").task)}
    for r in (r for r in result.methods if r.available):
        fp32 = module_registry.get_manifest(r.students[r.winner], task="facades-label2photo")
        q = module_registry.get_manifest(r.int8, task="facades-label2photo")
        assert r.int8 in listed and q.method == "int8" and q.parent == fp32.artifact_id
        assert q.architecture.precision == "int8" and q.quality.psnr_to_fp32 is not None
        assert q.quality.ssim_to_teacher is not None and q.quality.ssim_to_teacher != fp32.quality.ssim_to_teacher
        assert q.profiles and q.architecture.file_bytes < fp32.architecture.file_bytes
    assert {p["method"] for p in result.published} >= {"teacher", "gan-compression", "omgd", "int8"}


def test_report_lists_every_method_and_unavailable_ones_honestly(compared):
    result, root = compared
    report = (root / "report.md").read_text()
    coevo = next(r for r in result.methods if r.method == "coevolution")
    assert not coevo.available and "**coevolution: not available**" in report
    assert "| coevolution |" not in report
    assert "| baseline: identity |" in report and "| baseline: mean-image |" in report
    for r in (r for r in result.methods if r.available):
        assert f"| {r.method} | {r.winner} | `{r.students[r.winner]}`" in report
        assert f"| {r.method} int8 | {r.winner} | `{r.int8}` | int8 |" in report
    from PIL import Image

    with Image.open(root / "pareto.png") as img:  # matplotlib: the MACs panel, plus a latency panel when profiled
        assert img.size in ((900, 600), (1800, 600))


def test_status_cli_reads_the_method_of_a_run(compared):
    from compression_jobs.compress_cli import compress_cli

    _, root = compared
    res = CliRunner().invoke(compress_cli, ["status", str(root / "omgd")])
    assert res.exit_code == 0, res.output
    assert "method omgd" in res.output and "distill" not in res.output
    assert any(line.startswith("omgd") and "done" in line for line in res.output.splitlines())
    assert "OMGD student" in res.output
