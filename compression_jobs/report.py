"""The Pareto plot of the compression reports (matplotlib) and the table helpers they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

Color = tuple[int, int, int]
Point = tuple  # (MACs, SSIM to teacher, label) or (MACs, SSIM, label, measured p50 latency in ms or None)


@dataclass
class Series:
    """Points drawn alike: (MACs, SSIM to teacher, label[, p50 ms]); `ring` draws outlined circles
    (e.g. the INT8 variant of a point), `labels` writes each label next to its point."""

    name: str
    color: Color
    points: list[Point] = field(default_factory=list)
    radius: int = 3
    ring: bool = False
    labels: bool = False


def fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def manifest_row(m) -> dict:  # noqa: ANN001 - registry.manifest.Manifest
    """One artifact's figures for a report table: size, p50 of its first profile, fidelity."""
    prof = m.profiles[0] if m.profiles else None
    meas = prof.measurements[0] if prof else None
    a, q = m.architecture, m.quality
    return {"method": m.method, "id": m.artifact_id, "macs": a.macs, "params": a.params, "bytes": a.file_bytes,
            "precision": a.precision, "p50": meas.p50_ms if meas else None,
            "res": f"{meas.height}x{meas.width}" if meas else "–", "tag": prof.hardware_tag if prof else "–",
            "psnr_t": q.psnr_to_teacher, "ssim_t": q.ssim_to_teacher, "psnr_gt": q.psnr_to_ground_truth,
            "ssim_gt": q.ssim_to_ground_truth, "fid": q.fid, "kid": q.kid, "psnr_fp32": q.psnr_to_fp32}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower cost, higher quality), by rising cost."""
    front: list[tuple[float, float]] = []
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or quality > front[-1][1]:
            front.append((cost, quality))
    return front


def scatter(series: list[Series], path: Path, *, title: str, teacher_macs: float | None = None,
            budget_macs: float | None = None, size: tuple[int, int] = (900, 600),
            teacher_latency_ms: float | None = None) -> None:
    """SSIM to the teacher against MACs per image @256 (log) and, when points carry one, against the
    measured p50 latency (log, second panel). Each panel draws the Pareto front over every point
    as a dashed step line, the teacher as a black square at SSIM 1, and the MACs budget as a line.
    `size` is in pixels at 100 dpi (the latency panel doubles the width)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    def usable(p: Point) -> bool:
        return p[1] is not None and bool(p[0])

    has_latency = any(len(p) > 3 and p[3] for s in series for p in s.points if usable(p))
    panels = [("macs", "MACs per image @256x256 (log)")]
    if has_latency:
        panels.append(("latency", "measured p50 latency, ms (log)"))
    width, height = size
    fig = Figure(figsize=(width * len(panels) / 100, height / 100), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (kind, xlabel) in zip(axes, panels):
        def x_of(p: Point, kind: str = kind) -> float | None:
            return p[0] if kind == "macs" else (p[3] if len(p) > 3 and p[3] else None)

        everything = []
        for s in series:
            pts = [(x_of(p), p[1], p[2]) for p in s.points if usable(p) and x_of(p)]
            if not pts:
                continue
            everything += [(x, y) for x, y, _ in pts]
            rgb = tuple(c / 255 for c in s.color)
            area = (2 * s.radius) ** 2
            if s.ring:
                ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], s=area * 2, facecolors="none",
                           edgecolors=[rgb], linewidths=1.5, label=s.name, zorder=3)
            else:
                ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], s=area, color=[rgb], label=s.name, zorder=3)
            if s.labels:
                for x, y, label in pts:
                    ax.annotate(label, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7, color=rgb)
        teacher_x = teacher_macs if kind == "macs" else teacher_latency_ms
        if teacher_x:
            everything.append((teacher_x, 1.0))
            ax.scatter([teacher_x], [1.0], marker="s", s=60, color="black", label="teacher", zorder=4)
        front = pareto_front(everything)
        if len(front) > 1:
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color="black", linestyle="--",
                    linewidth=1, label="Pareto front", zorder=2)
        if kind == "macs" and budget_macs:
            ax.axvline(budget_macs, color=(0, 0.6, 0), linewidth=1, label="MACs budget")
        if everything:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("SSIM to teacher")
        ax.grid(True, which="both", alpha=0.25)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
