"""``drivegpt data inspect shards=...``: fleet summary and contact sheet of shards."""

from __future__ import annotations

from drivegpt.data.inspect import format_checks, format_summary, inspect_shards
from drivegpt.runs import write_metrics
from drivegpt.stages.common import run_dir_of


def run(cfg) -> dict:
    run_dir = run_dir_of(cfg)
    out = inspect_shards(cfg.shards, n_frames=int(cfg.contact_sheet_frames),
                         per_segment=int(cfg.get("frames_per_segment", 4)),
                         skip_bad=bool(cfg.data.get("skip_bad", False)),
                         sheet_path=run_dir / "contact_sheet.png",
                         decode_all=bool(cfg.get("decode_all", False)))
    print(format_summary(out))
    print(format_checks(out))
    for msg in out.get("errors", [])[:20]:
        print(f"  bad: {msg}")
    if "contact_sheet" in out:
        print(f"contact sheet: {out['contact_sheet']}")
    write_metrics(run_dir, out)
    return out
