"""``drivegpt fleet generate out=DIR segments=N seconds=S``: the synthetic fleet.

Segment i is ``drivegpt.sim.roadworld.drive_segment(seed=first_seed + i, seconds, cfg.sim,
height, width)``: a road/traffic/weather draw, a randomized-quality autopilot, the
ground-truth safety driver and the human takeover (see the road-world README section).
Segments are driven in ``workers`` processes by ``drivegpt.data.shards.write_shards`` (one per
core), written as shards plus ``manifest.json`` under ``out``; a re-run skips finished shards
(resumable), and refuses to extend a directory generated with different settings
(``fleet.json`` records them). The fleet summary (``drivegpt.data.inspect``: hours, km,
disengagements per 100 km by cause, engaged fraction) is printed and written to
``run_dir/metrics.json`` with the timing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from drivegpt.data.inspect import format_summary, inspect_shards
from drivegpt.data.shards import read_manifest, write_shards
from drivegpt.data.video import DEFAULT_CODEC
from drivegpt.runs import atomic_write_json, read_json, write_metrics
from drivegpt.sim.roadworld.source import ProceduralSource
from drivegpt.stages.common import plain

FLEET_FILE = "fleet.json"


def check_settings(out: Path, settings: dict) -> None:
    """Record the generator settings in ``out/fleet.json``; refuse to resume with others."""
    path = out / FLEET_FILE
    settings = json.loads(json.dumps(settings))  # normalise tuples etc. as JSON would
    if path.exists():
        old = read_json(path)
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{path}: this directory holds a fleet generated with other settings "
                             f"(differs in {', '.join(diff)}); use another out= directory")
    else:
        atomic_write_json(path, settings)
        path.chmod(0o644)


def run(cfg) -> dict:
    run_dir = Path(cfg.run_dir)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    src = ProceduralSource(cfg.segments, cfg.seconds, plain(cfg.sim), cfg.first_seed,
                           cfg.data.frame_height, cfg.data.frame_width)
    check_settings(out, src.settings())
    try:  # frames already in finished shards (a resumed run skips them)
        before = sum(e["frames"] for e in read_manifest(out).get("shards", [])
                     if (out / e["name"]).exists() and (out / e["name"]).stat().st_size == e["bytes"])
    except FileNotFoundError:
        before = 0
    t0 = time.perf_counter()
    manifest = write_shards(out, src.n_items, src.make_item, maxcount=int(cfg.data.shard_maxcount),
                            workers=int(cfg.workers), prefix="fleet",
                            codec=str(cfg.data.get("codec", DEFAULT_CODEC)))
    elapsed = time.perf_counter() - t0
    summary = inspect_shards(out, sheet_path=None)  # labels only: no video decoding
    summary.update(
        out=str(out), shards=len(manifest["shards"]), complete=bool(manifest["complete"]),
        generate_seconds=elapsed, workers=int(cfg.workers),
        frames_this_run=summary["frames"] - before,
        frames_per_second=(summary["frames"] - before) / elapsed if elapsed > 0 else None,
    )
    print(format_summary(summary))
    print(f"wrote {summary['shards']} shards to {out} in {elapsed:.1f} s with {cfg.workers} workers")
    write_metrics(run_dir, summary)
    return summary
