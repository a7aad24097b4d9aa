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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression_jobs.report import Series, manifest_row, scatter  # noqa: E402
from compression_jobs.report import fmt as _fmt  # noqa: E402
from registry.artifact import read_artifact_dir  # noqa: E402


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
        rows.append({**manifest_row(m), "name": name,
                     "reduction": t_macs / m.architecture.macs if m.architecture.macs else None})
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
    pareto = set(search.get("pareto", []))
    evaluated = [(c["macs"], c["ssim_to_teacher"], c["config"]) for c in search["evaluated"]
                 if c["ssim_to_teacher"] is not None]
    scatter(
        [Series("searched", (170, 170, 170), [p for p in evaluated if p[2] not in pareto]),
         Series("Pareto", (40, 90, 220), [p for p in evaluated if p[2] in pareto]),
         Series("published", (220, 30, 30), [(r["macs"], r["ssim_t"], r["name"]) for r in rows
                                             if r["method"] != "teacher" and r["ssim_t"] is not None],
                radius=6, ring=True)],
        path, title="SSIM to teacher on held-out images  (grey: searched, blue: Pareto, red: published)",
        teacher_macs=search.get("teacher_macs"), budget_macs=search.get("budget_macs"), size=size,
    )


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
