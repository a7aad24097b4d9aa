"""A MACs-vs-SSIM scatter plot drawn with PIL (no plotting dependency), shared by the reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

Color = tuple[int, int, int]


@dataclass
class Series:
    """Points (MACs, SSIM to teacher, label) drawn alike; `ring` draws outlined circles instead of dots."""

    name: str
    color: Color
    points: list[tuple[float, float, str]] = field(default_factory=list)
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


def scatter(series: list[Series], path: Path, *, title: str, teacher_macs: float | None = None,
            budget_macs: float | None = None, size: tuple[int, int] = (900, 600)) -> None:
    """x = MACs per image @256 (log), y = SSIM to teacher; teacher as a black square at SSIM 1, budget as a line."""
    W, H = size
    ml, mr, mt, mb = 80, 30, 40, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series for p in s.points if p[1] is not None and p[0]]
    xs = [p[0] for p in pts] + ([teacher_macs] if teacher_macs else [])
    ys = [p[1] for p in pts] + [1.0]
    if not xs:
        img.save(path)
        return
    x0, x1 = math.log10(min(xs)) - 0.05, math.log10(max(xs)) + 0.05
    y0, y1 = max(0.0, min(ys) - 0.05), min(1.0, max(ys) + 0.02)

    def px(macs: float, ssim: float) -> tuple[float, float]:
        x = ml + (math.log10(macs) - x0) / (x1 - x0) * (W - ml - mr)
        y = H - mb - (ssim - y0) / max(1e-9, (y1 - y0)) * (H - mt - mb)
        return x, y

    d.rectangle([ml, mt, W - mr, H - mb], outline="black")
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        _, y = px(10**x0, yv)
        d.line([ml - 4, y, ml, y], fill="black")
        d.text((8, y - 6), f"{yv:.3f}", fill="black")
    for e in range(int(math.floor(x0)), int(math.ceil(x1)) + 1):
        for m in (1, 2, 5):
            v = m * 10**e
            if x0 <= math.log10(v) <= x1:
                x, _ = px(v, y0)
                d.line([x, H - mb, x, H - mb + 4], fill="black")
                d.text((x - 14, H - mb + 8), f"{v / 1e9:g}G", fill="black")
    d.text((W // 2 - 90, H - 25), "MACs per image @256x256 (log)", fill="black")
    d.text((ml, 12), title, fill="black")
    for s in series:
        for macs, ssim, label in s.points:
            if ssim is None or not macs:
                continue
            x, y = px(macs, ssim)
            r = s.radius
            if s.ring:
                d.ellipse([x - r, y - r, x + r, y + r], outline=s.color, width=2)
            else:
                d.ellipse([x - r, y - r, x + r, y + r], fill=s.color)
            if s.labels:
                d.text((x + r + 3, y - 6), label, fill=s.color)
    legend_y = H - mb - 6 - 14 * sum(1 for s in series if s.points)  # bottom right: the teacher sits top right
    for s in series:
        if s.points:
            d.ellipse([W - mr - 150, legend_y, W - mr - 142, legend_y + 8], fill=s.color)
            d.text((W - mr - 136, legend_y - 2), s.name, fill="black")
            legend_y += 14
    if teacher_macs:
        x, y = px(teacher_macs, 1.0)
        d.rectangle([x - 5, y - 5, x + 5, y + 5], fill=(0, 0, 0))
        d.text((x - 50, y + 8), "teacher", fill="black")
    if budget_macs:
        x, _ = px(budget_macs, y0)
        d.line([x, mt, x, H - mb], fill=(0, 150, 0), width=1)
        d.text((x + 3, mt + 3), "budget", fill=(0, 150, 0))
    img.save(path)
