"""``drivegpt report run_dir=... [source=DIR]``: the HTML evaluation report of a run directory."""

from __future__ import annotations

from pathlib import Path

from drivegpt.report import build_report, stage_dirs
from drivegpt.runs import write_metrics


def run(cfg) -> dict:
    src = Path(cfg.get("source") or cfg.run_dir)
    out = build_report(src, Path(cfg.run_dir) / "report.html")
    metrics = {"report": str(out), "stages": [d.name for _, d in stage_dirs(src)]}
    write_metrics(cfg.run_dir, metrics) if Path(cfg.run_dir) != src else None
    print(f"report: {out}")
    return metrics
