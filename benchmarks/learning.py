"""The learning scoreboard of a pipeline run: every target's figure, its baseline and ``targets_met``.

    python benchmarks/learning.py --run-dir DIR                     # score a finished run
    python benchmarks/learning.py --run --experiment proof --run-dir DIR [overrides...]
                                                                    # run the pipeline, then score it

Prints one JSON line (``drivegpt.scoreboard.summary``): each figure by metric name, its
baseline (``<name>_baseline``, measured in the same run: bicubic for the tokenizer, the
speed-only logistic regression for the hazard, the pose-zeroed model for pose-following,
copy-last-frame for counterfactuals, BC/autopilot for the policy), ``<name>_met``, the count of
targets met, ``targets_met`` (all of them), and the pipeline's wall seconds (only the stages
this invocation ran are timed; cached stages are listed separately).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from drivegpt.scoreboard import scoreboard, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--run", action="store_true", help="run the pipeline first (resumes a partial run dir)")
    ap.add_argument("--experiment", default="proof")
    ap.add_argument("--targets", default=None, help="demo | proof (default: the run's own, else --experiment)")
    args, extra = ap.parse_known_args()
    if not args.run and not args.run_dir:
        ap.error("give --run-dir DIR of a finished run, or --run")
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="drivegpt-learning-"))
    wall = None
    if args.run:
        cmd = [sys.executable, "-m", "drivegpt", "pipeline", f"experiment={args.experiment}",
               f"run_dir={run_dir}", *extra]
        t0 = time.time()
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        wall = time.time() - t0
        if proc.returncode:
            sys.exit(f"learning: pipeline failed (exit {proc.returncode}); see the log above")
    top = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    preset = args.targets or top.get("targets") or args.experiment
    out = summary(scoreboard(run_dir, preset))
    stages = top.get("stages", {})
    ran = {k: v["seconds"] for k, v in stages.items() if v.get("status") == "ran"}
    print(json.dumps({"benchmark": "learning", "run_dir": str(run_dir), "targets": preset, **out,
                      "stage_seconds_ran": ran,
                      "stages_cached": sorted(k for k, v in stages.items() if v.get("status") == "cached"),
                      "pipeline_wall_seconds": None if wall is None else round(wall, 1)}))


if __name__ == "__main__":
    main()
