"""Report for a co-evolution run (method: coevolution): what pruning removed and what it cost in fidelity.

    python benchmarks/coevolution_report.py RUN_DIR

Reads RUN_DIR/coevolve/coevolve.json (GA history, best code's widths and MACs), the exported
manifests (RUN_DIR/export/*/manifest.json: MACs, params, bytes, p50 latency measured at export,
PSNR/SSIM to the teacher on the held-out split) and also measures the compact generator *before*
fine-tuning on the same held-out images, so the search and the fine-tuning can be judged apart.
Prints measured figures and ratios only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args()
    run = args.run_dir

    import yaml

    from compression_jobs.coevolution.stages import G_FILE, SEARCH_FILE, compact_student
    from compression_jobs.coevolution.prune import PrunedWidths
    from compression_jobs.gan_compression.config import JobConfig
    from compression_jobs.pipeline import ARTIFACTS_FILE, Context, held_out, read_state
    from compression_jobs.gan_compression.evaluate import fidelity
    from registry.artifact import read_artifact_dir

    job = JobConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    ctx = Context(job, run)
    search = json.loads((run / "coevolve" / SEARCH_FILE).read_text())
    exported = json.loads((run / "export" / ARTIFACTS_FILE).read_text())
    teacher = read_artifact_dir(run / "export" / "teacher")
    student_name = next(k for k in exported if k != "teacher")
    student = read_artifact_dir(run / "export" / student_name)
    test, teacher_out, _ = held_out(ctx)
    before = fidelity(compact_student(ctx, PrunedWidths.parse(search["channel_config"]), run / "coevolve" / G_FILE),
                      test, teacher_out, job.eval_batch_size)

    def p50(m) -> float | None:
        return m.profiles[0].measurements[0].p50_ms if m.profiles else None

    ta, sa = teacher.architecture, student.architecture
    print(f"run: {run}  data: {job.data.dataset_name} ({len(test)} held-out at {job.data.crop_size}px)")
    print(f"widths: teacher {job.teacher.ngf}-ngf ResNet-{job.teacher.n_blocks} -> {sa.channel_config} "
          f"(stem_down1_stream_blocks..._up1_up2; stream pruned: {search['prune_stream']})")
    print("| artifact | GMACs @256 | params | ONNX bytes | p50 ms | SSIM->teacher | PSNR->teacher |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m in (("teacher", teacher), ("coevolution (fine-tuned)", student)):
        q = m.quality
        ssim = f"{q.ssim_to_teacher:.3f}" if q.ssim_to_teacher is not None else "-"
        psnr = f"{q.psnr_to_teacher:.2f} dB" if q.psnr_to_teacher is not None else "-"
        lat = f"{p50(m):.2f}" if p50(m) is not None else "-"
        print(f"| {name} | {m.architecture.macs / 1e9:.3f} | {m.architecture.params:,} | {m.architecture.file_bytes:,} | "
              f"{lat} | {ssim} | {psnr} |")
    print(f"| coevolution (before fine-tune) | {sa.macs / 1e9:.3f} | {sa.params:,} | - | - | "
          f"{before['ssim_to_teacher']:.3f} | {before['psnr_to_teacher']:.2f} dB |")
    print(f"MACs reduction {ta.macs / sa.macs:.2f}x, params reduction {ta.params / sa.params:.2f}x, "
          f"budget {search['cost']['budget_macs'] or 0:,} MACs (within: {search['cost']['within_budget']})")
    if p50(teacher) and p50(student):
        print(f"latency speed-up (p50, export resolution, this machine): {p50(teacher) / p50(student):.2f}x")
    for side in search["result"]["sides"]:
        h = side["history"]
        print(f"GA {side['name']}: best loss {h[0]:.4f} -> {h[-1]:.4f} over {len(h) - 1} generations; "
              f"final terms {json.dumps({k: round(v, 4) for k, v in side['best'].items()})}")
    times = {k: v["seconds"] for k, v in read_state(run)["completed"].items()}
    print("stage seconds:", json.dumps(times))


if __name__ == "__main__":
    main()
