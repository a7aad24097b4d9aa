"""`pocketgan demo` end to end (shortened settings): its own S3, the real vintagify teacher (no teacher
training), compression, a roll-out of teacher + students through a real `bentoml serve`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

PKG_BIN = Path(sys.executable).parent / "pocketgan"
SHORT = ["--set", "data.max_train=6", "--set", "data.max_test=2", "--set", "data.load_size=72",
         "--set", "data.crop_size=64", "--set", "distill.train_crop=32", "--set", "coevolution.finetune_steps=2",
         "--set", "coevolution.extra_finetune_steps=[3]",
         "--set", "export.resolution=64", "--set", "export.profile_runs=3"]
"""Two training steps: the students cannot beat the identity baseline, so --publish-all serves them anyway."""


def _demo(workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PKG_BIN), "demo", "--workdir", str(workdir), "--images", "2", "--publish-all", *SHORT],
        env=env, capture_output=True, text=True, timeout=1500,
    )


def _serving_demo(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`pocketgan demo --serve`, returned once it prints its "serving on ... (pid N) ..." line."""
    proc = subprocess.Popen(
        [str(PKG_BIN), "demo", "--workdir", str(workdir), "--images", "2", "--publish-all", "--serve", *SHORT],
        env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("serving on"):
                break
    except BaseException:  # e.g. the test's timeout: the caller's `finally` is not reached yet
        proc.terminate()  # SIGTERM: the demo stops its server on the way out
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return proc, line


@pytest.mark.timeout(2400)
def test_demo_serves_the_real_teacher_and_its_students_and_reuses_its_work(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp_path / "bentoml")}
    for key in ("POCKETGAN_REGISTRY", "POCKETGAN_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "POCKETGAN_NO_PROGRESS"):
        env.pop(key, None)
    work = tmp_path / "demo"
    try:
        first = _demo(work, env)
        assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-2000:]
        assert "\r" not in first.stderr  # not a terminal: one line per step, no redrawn bars
        assert "train-teacher" in first.stderr and "teacher" in first.stderr and "(not trained)" in first.stderr
        summary = json.loads((work / "outputs" / "summary.json").read_text())
        methods = summary["methods"]
        assert sorted(methods.values()) == ["coevolution", "coevolution", "teacher"]
        assert summary["teacher"].endswith("G_A2B_epoch33.pth")
        # every column was served by the service: the teacher first, then each student after its roll-out
        cols = summary["columns"]
        assert [methods[c["artifact_id"]] for c in cols] == ["teacher", "coevolution", "coevolution"]
        assert cols[1]["macs"] > cols[2]["macs"] and cols[0]["macs"] / cols[1]["macs"] > 9
        assert all(c["served_ms_median"] > 0 for c in cols)
        assert all(0 < c["ssim_to_teacher_served"] <= 1 for c in cols[1:])
        assert 0 < summary["identity_ssim_to_teacher_served"] < 1  # the input column is the identity baseline
        for t in summary["translations"]:
            out = Image.open(t["output"])
            assert out.mode == "RGB" and out.size[0] == out.size[1] >= 64
        # the best-quality device class: a tight budget picks the best student that fits, a generous one the teacher
        picks = summary["best_quality"]
        assert [p["policy"] for p in picks] == ["best-quality", "best-quality"] and all(p["budget_met"] for p in picks)
        assert picks[0]["budget_ms"] < picks[1]["budget_ms"]
        assert methods[picks[0]["artifact_id"]] == "coevolution" and picks[1]["artifact_id"] == cols[0]["artifact_id"]
        impossible = [t for t in summary["translations"] if t["budget_ms"] == 1.0]
        assert len(impossible) == 2 and all(t["no_eligible"] and not t["budget_met"] for t in impossible)
        sheet = Image.open(work / "outputs" / "side_by_side.png")
        assert sheet.width > 3 * sheet.height / 2  # 4 columns (input | teacher | 2 students) x 2 rows
        assert "FLAGGED" in (work / "run" / "export" / "report.md").read_text()
        assert "side by side:" in first.stdout and "export POCKETGAN_REGISTRY=" in first.stdout

        # again, with --serve: reuses everything, then keeps serving and says how to stop it
        again, line = _serving_demo(work, env)
        try:
            match = re.search(r"\(pid (\d+)\).*kill -TERM -- -(\d+)", line)
            assert match and match.group(1) == match.group(2), line
            os.killpg(int(match.group(1)), signal.SIGTERM)  # the printed stop command
            out, err = again.communicate(timeout=120)
        finally:
            if again.poll() is None:
                again.kill()
        assert again.returncode == 0, err[-3000:]
        assert "reusing local S3" in err
        assert "[run ]" not in err and err.count("[skip]") >= 5
        state = json.loads((work / "run" / "state.json").read_text())["completed"]
        assert state["prune-finetune"]["info"]["steps"] == [2, 3]  # the 30x student's own step count

        # SIGTERM to the demo itself (a CI timeout, `kill PID`) stops its server too: nothing is left serving
        third, line = _serving_demo(work, env)
        try:
            match = re.search(r"\(pid (\d+)\)", line)
            assert match, line
            third.send_signal(signal.SIGTERM)
            out, err = third.communicate(timeout=120)
        finally:
            if third.poll() is None:
                third.kill()
        assert third.returncode == 128 + signal.SIGTERM, err[-3000:]
        deadline = time.monotonic() + 10  # the server's whole process group is gone (orphans reaped by init)
        while True:
            try:
                os.killpg(int(match.group(1)), 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "the demo's server outlived the demo"
            time.sleep(0.2)
    finally:
        subprocess.run([str(PKG_BIN), "s3", "down", "--dir", str(work / "s3")], env=env, capture_output=True)


def test_best_quality_budgets_come_from_the_services_expectations_and_stay_legal() -> None:
    """A tight budget between the student's and the teacher's expected latency, a generous one at twice
    the teacher's; none when the service gave no expectation or the student is not faster; always
    within the service's accepted budget range."""
    from pocketgan.demo import Translation, quality_budgets

    def served(aid: str, expected: float | None) -> Translation:
        return Translation(image="1.jpg", budget_ms=150, artifact_id=aid, method="m", latency_ms=1.0,
                           expected_ms=expected, budget_met=True, no_eligible=False, output=Path("x.png"))

    assert quality_budgets([served("t", 300), served("s", 40)], "t", "s") == (109.5, 600.0)
    assert quality_budgets([served("t", 0.9), served("s", 0.2)], "t", "s")[0] == 1.0
    assert quality_budgets([served("t", 40000), served("s", 400)], "t", "s")[1] == 60000.0
    assert quality_budgets([served("t", 30), served("s", 40)], "t", "s") is None
    assert quality_budgets([served("t", None), served("s", 40)], "t", "s") is None
