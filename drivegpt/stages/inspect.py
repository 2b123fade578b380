"""``drivegpt data inspect shards=...``: fleet summary and contact sheet of shards."""

from __future__ import annotations

from drivegpt.data.inspect import format_summary, inspect_shards
from drivegpt.runs import write_metrics
from drivegpt.stages.common import run_dir_of


def run(cfg) -> dict:
    run_dir = run_dir_of(cfg)
    out = inspect_shards(cfg.shards, n_frames=int(cfg.contact_sheet_frames),
                         per_segment=int(cfg.get("frames_per_segment", 4)),
                         skip_bad=bool(cfg.data.get("skip_bad", False)),
                         sheet_path=run_dir / "contact_sheet.png")
    print(format_summary(out))
    if "contact_sheet" in out:
        print(f"contact sheet: {out['contact_sheet']}")
    write_metrics(run_dir, out)
    return out
