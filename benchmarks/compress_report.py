"""Report for a GAN Compression run: markdown table + Pareto plot (PNG, drawn with PIL).

    python benchmarks/compress_report.py RUN_DIR [--out DIR]

Reads RUN_DIR/export/*/manifest.json (teacher and published students: MACs, params, file size,
latency measured on this machine at export, PSNR/SSIM to the teacher on held-out images) and
RUN_DIR/search/search.json (every sub-network scored during search). Prints the table and the
MACs-reduction / SSIM figures as ratios; writes RUN_DIR/report.md and RUN_DIR/pareto.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.artifact import read_artifact_dir  # noqa: E402


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def load_run(run_dir: Path) -> tuple[dict, list, dict]:
    exp = run_dir / "export"
    if not exp.is_dir():
        raise SystemExit(f"{run_dir} has no export/ stage output; run the pipeline through `export` first")
    manifests = {d.name: read_artifact_dir(d) for d in sorted(exp.iterdir()) if (d / "manifest.json").is_file()}
    if "teacher" not in manifests:
        raise SystemExit(f"no teacher artifact in {exp}")
    search = json.loads((run_dir / "search" / "search.json").read_text())
    state = json.loads((run_dir / "state.json").read_text())
    return manifests, search, state


def table(manifests: dict) -> tuple[str, list[dict]]:
    teacher = manifests["teacher"]
    t_macs = teacher.architecture.macs or 1
    rows = []
    for name, m in manifests.items():
        prof = m.profiles[0] if m.profiles else None
        meas = prof.measurements[0] if prof else None
        rows.append({
            "name": name, "method": m.method, "id": m.artifact_id, "macs": m.architecture.macs,
            "reduction": t_macs / m.architecture.macs if m.architecture.macs else None,
            "params": m.architecture.params, "bytes": m.architecture.file_bytes,
            "p50": meas.p50_ms if meas else None, "res": f"{meas.height}x{meas.width}" if meas else "–",
            "tag": prof.hardware_tag if prof else "–",
            "psnr_t": m.quality.psnr_to_teacher, "ssim_t": m.quality.ssim_to_teacher,
            "ssim_gt": m.quality.ssim_to_ground_truth, "psnr_gt": m.quality.psnr_to_ground_truth,
        })
    rows.sort(key=lambda r: -(r["macs"] or 0))
    t_p50 = rows[0]["p50"] if rows and rows[0]["name"] == "teacher" else None
    lines = [
        "| artifact | method | id | GMACs @256 | MACs reduction | params | ONNX size | p50 ms (res, tag) | speed-up | PSNR→teacher | SSIM→teacher | PSNR→GT | SSIM→GT |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = (t_p50 / r["p50"]) if (t_p50 and r["p50"]) else None
        lines.append(
            f"| {r['name']} | {r['method']} | `{r['id']}` | {_fmt((r['macs'] or 0) / 1e9)} | {_fmt(r['reduction'], '.1f')}x | "
            f"{r['params']:,} | {(r['bytes'] or 0) / 1e6:.2f} MB | {_fmt(r['p50'], '.2f')} ({r['res']}, {r['tag']}) | "
            f"{_fmt(speed, '.1f')}x | {_fmt(r['psnr_t'], '.2f')} | {_fmt(r['ssim_t'])} | {_fmt(r['psnr_gt'], '.2f')} | {_fmt(r['ssim_gt'])} |"
        )
    return "\n".join(lines), rows


def plot(search: dict, rows: list[dict], path: Path, size: tuple[int, int] = (900, 600)) -> None:
    """Scatter: x = MACs (log scale), y = SSIM to teacher. Grey: scored in search; blue: Pareto; red: published."""
    W, H = size
    ml, mr, mt, mb = 80, 30, 40, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [(c["macs"], c["ssim_to_teacher"], c["config"]) for c in search["evaluated"] if c["ssim_to_teacher"] is not None]
    students = [(r["macs"], r["ssim_t"], r["name"]) for r in rows if r["method"] != "teacher" and r["ssim_t"] is not None]
    teacher_macs = search.get("teacher_macs")
    xs = [p[0] for p in pts + students] + ([teacher_macs] if teacher_macs else [])
    ys = [p[1] for p in pts + students] + [1.0]
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
    d.text((ml, 12), "SSIM to teacher on held-out images  (grey: searched, blue: Pareto, red: published)", fill="black")
    pareto = set(search.get("pareto", []))
    for macs, ssim, cfg in pts:
        x, y = px(macs, ssim)
        col = (40, 90, 220) if cfg in pareto else (170, 170, 170)
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
    for macs, ssim, name in students:
        x, y = px(macs, ssim)
        d.ellipse([x - 6, y - 6, x + 6, y + 6], outline=(220, 30, 30), width=2)
    if teacher_macs:
        x, y = px(teacher_macs, 1.0)
        d.rectangle([x - 5, y - 5, x + 5, y + 5], fill=(0, 0, 0))
        d.text((x - 50, y + 8), "teacher", fill="black")
    budget = search.get("budget_macs")
    if budget:
        x, _ = px(budget, y0)
        d.line([x, mt, x, H - mb], fill=(0, 150, 0), width=1)
        d.text((x + 3, mt + 3), "budget", fill=(0, 150, 0))
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, help="folder for report.md and pareto.png (default RUN_DIR)")
    args = ap.parse_args()
    manifests, search, state = load_run(args.run_dir)
    out = args.out or args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    md, rows = table(manifests)
    teacher = manifests["teacher"]
    cfg = state.get("completed", {})
    secs = {k: v.get("seconds") for k, v in cfg.items()}
    best = max((r for r in rows if r["method"] != "teacher"), key=lambda r: r["reduction"] or 0, default=None)
    summary = [
        f"# GAN Compression report: {args.run_dir}",
        "",
        f"- task `{teacher.task}`, data `{teacher.quality.dataset}` split `{teacher.quality.split}` "
        f"({teacher.quality.n_images} held-out images at {teacher.quality.resolution}px)",
        f"- search budget: {search.get('budget_macs') and format(search['budget_macs'] / 1e9, '.3f')} GMACs"
        f" / {search.get('budget_latency_ms')} ms; {len(search['evaluated'])} sub-networks scored, "
        f"{len(search['pareto'])} on the Pareto front, {len(search['chosen'])} fine-tuned and published",
        f"- stage wall times (s): {secs}",
    ]
    if best:
        summary.append(
            f"- smallest published student: {best['reduction']:.1f}x fewer MACs than the teacher, "
            f"SSIM to teacher {_fmt(best['ssim_t'])} (goal: >= 20x at SSIM >= 0.90)"
        )
    text = "\n".join(summary) + "\n\n" + md + "\n\n![pareto](pareto.png)\n"
    (out / "report.md").write_text(text)
    plot(search, rows, out / "pareto.png")
    print(text)
    print(f"wrote {out / 'report.md'} and {out / 'pareto.png'}")


if __name__ == "__main__":
    main()
