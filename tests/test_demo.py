"""`pocketgan demo` end to end (tiny config): its own S3, the job, promotion, real `bentoml serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

PKG_BIN = Path(sys.executable).parent / "pocketgan"


def _demo(workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PKG_BIN), "demo", "--config", "tiny", "--workdir", str(workdir), "--images", "2"],
        env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.timeout(1200)
def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp_path / "bentoml")}
    for key in ("POCKETGAN_REGISTRY", "POCKETGAN_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key, None)
    work = tmp_path / "demo"
    try:
        first = _demo(work, env)
        assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-2000:]
        summary = json.loads((work / "outputs" / "summary.json").read_text())
        methods = summary["methods"]
        assert sorted(set(methods.values())) == ["gan-compression", "teacher"]
        by_budget: dict[float, list[dict]] = {}
        for t in summary["translations"]:
            by_budget.setdefault(t["budget_ms"], []).append(t)
            out = Image.open(t["output"])
            assert out.size == (128, 128) and out.mode == "RGB"
        assert sorted(by_budget) == [1.0, 150.0]
        # the realistic budget is judged on profiles (too few observations to correct them): a student
        assert all(methods[t["artifact_id"]] == "gan-compression" for t in by_budget[150.0])
        assert all(t["no_eligible"] and not t["budget_met"] for t in by_budget[1.0])
        sheet = Image.open(work / "outputs" / "side_by_side.png")
        assert sheet.width > 3 * sheet.height / 2  # 4 columns (input | teacher | student | truth) x 2 rows
        assert "side by side:" in first.stdout and "export POCKETGAN_REGISTRY=" in first.stdout

        again = _demo(work, env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "reusing local S3" in again.stderr
        assert "[run ]" not in again.stderr and again.stderr.count("[skip]") >= 7
        assert "already holds these 3 artifacts" in again.stderr
    finally:
        subprocess.run([str(PKG_BIN), "s3", "down", "--dir", str(work / "s3")], env=env, capture_output=True)
