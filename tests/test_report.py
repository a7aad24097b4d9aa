"""The Pareto plot (matplotlib): front, MACs panel, measured-latency panel."""

from __future__ import annotations

import numpy as np
from PIL import Image

from compression_jobs.report import Series, pareto_front, scatter


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10.0, 0.9), (5.0, 0.8), (6.0, 0.7), (1.0, 0.5), (5.0, 0.6), (20.0, 0.85)]
    assert pareto_front(pts) == [(1.0, 0.5), (5.0, 0.8), (10.0, 0.9)]
    assert pareto_front([]) == []


def _series(with_latency: bool) -> list[Series]:
    def p(macs, ssim, name, ms):  # noqa: ANN001, ANN202
        return (macs, ssim, name, ms) if with_latency else (macs, ssim, name)

    return [Series("a", (200, 30, 30), [p(1e9, 0.8, "s1", 12.0), p(3e9, 0.9, "s2", 30.0), p(2e9, 0.7, "s3", 25.0)],
                   labels=True),
            Series("a int8", (200, 30, 30), [p(1e9, 0.78, "int8", 6.0)], radius=6, ring=True),
            Series("empty", (0, 0, 0), [])]


def test_scatter_draws_macs_and_latency_panels(tmp_path):
    scatter(_series(False), tmp_path / "macs.png", title="t", teacher_macs=5e10, budget_macs=4e9)
    scatter(_series(True), tmp_path / "both.png", title="t", teacher_macs=5e10, budget_macs=4e9, teacher_latency_ms=400.0)
    with Image.open(tmp_path / "macs.png") as one, Image.open(tmp_path / "both.png") as two:
        assert one.size == (900, 600) and two.size == (1800, 600)
        left, right = np.asarray(two.convert("RGB"))[:, :900], np.asarray(two.convert("RGB"))[:, 900:]
    red = lambda a: ((a[..., 0] > 150) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum()  # noqa: E731 - series colour
    assert red(left) > 50 and red(right) > 50  # the points are drawn on both axes


def test_scatter_without_points_still_writes_a_plot(tmp_path):
    scatter([Series("none", (0, 0, 0), [(0, None, "x")])], tmp_path / "empty.png", title="nothing measured")
    with Image.open(tmp_path / "empty.png") as img:
        assert img.size == (900, 600)
