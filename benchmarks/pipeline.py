"""Wall time per stage of `drivegpt pipeline experiment=demo` on this machine, with peak memory.

    python benchmarks/pipeline.py [--run-dir DIR] [extra overrides...]

Prints one JSON line: the seconds of every stage *this run* executed (``stage_seconds``), the
stages it skipped because an earlier run in the same run dir had finished them
(``stages_cached``: their seconds belong to that earlier run and are not reported), this run's
wall time, the ratio to the 15-minute target (<= 1.0 meets it; ``complete_run`` is false when a
stage was cached, i.e. the wall time is not a fleet-to-report time), and the peak resident
memory of the pipeline process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 15 * 60


def split_stages(metrics: dict) -> tuple[dict, list]:
    """(seconds of the stages this run executed, names of the stages it found finished)."""
    stages = metrics.get("stages", {})
    ran = {k: v["seconds"] for k, v in stages.items() if v.get("status") == "ran"}
    cached = sorted(k for k, v in stages.items() if v.get("status") == "cached")
    return ran, cached


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--experiment", default="demo")
    args, extra = ap.parse_known_args()
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="drivegpt-pipeline-"))
    cmd = [sys.executable, "-m", "drivegpt", "pipeline", f"experiment={args.experiment}",
           f"run_dir={run_dir}", *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
    wall = time.time() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    metrics = json.loads((run_dir / "metrics.json").read_text()) if proc.returncode == 0 else {}
    ran, cached = split_stages(metrics)
    print(json.dumps({
        "benchmark": "pipeline",
        "experiment": args.experiment,
        "ok": proc.returncode == 0,
        "wall_seconds": round(wall, 1),
        "stage_seconds": ran,
        "stages_cached": cached,
        "complete_run": proc.returncode == 0 and not cached,
        "target_seconds": TARGET_SECONDS,
        "ratio_to_target": round(wall / TARGET_SECONDS, 3),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "cpus": __import__("os").cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "run_dir": str(run_dir),
    }))


if __name__ == "__main__":
    main()
