"""``drivegpt fleet generate out=DIR segments=N seconds=S``: the synthetic fleet.

Segment i is ``drivegpt.sim.roadworld.drive_segment(seed=first_seed + i, seconds, cfg.sim,
height, width)``: a road/traffic/weather draw, a randomized-quality autopilot, the
ground-truth safety driver and the human takeover (see the road-world README section).
Segments are driven in ``workers`` processes by ``drivegpt.data.shards.write_shards`` (one per
core), written as shards plus ``manifest.json`` under ``out``; a re-run skips finished shards
(resumable), and refuses to extend a directory generated with different settings
(``fleet.json`` records them). The fleet summary (``drivegpt.data.inspect``: hours, km,
disengagements per 100 km by cause, engaged fraction) is printed and written to
``run_dir/metrics.json`` with the timing, and ``splits``: per held-out split
(``data.val_fraction``, by segment id) the disengagements by cause and per km, so later stages
can check they have events of every cause to score.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from drivegpt.data.inspect import FleetStats, format_summary, inspect_shards
from drivegpt.data.loaders import split_of
from drivegpt.data.shards import read_manifest, write_shards
from drivegpt.data.shard_reading import iter_samples
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


def split_summary(shards, val_fraction: float) -> dict:
    """Per held-out split (``drivegpt.data.loaders.split_of`` by segment id, as every stage splits):
    segments, km, ``disengagements_by_cause`` and per km of driving; labels only."""
    stats = {"train": FleetStats(), "val": FleetStats()}
    for seg in iter_samples(str(shards), frames=False):
        stats[split_of(seg.meta["segment_id"], val_fraction)].add(seg)
    out = {"val_fraction": val_fraction}
    for name, st in stats.items():
        s = st.summary()
        out[name] = {k: s[k] for k in ("segments", "km", "disengagements", "disengagements_by_cause")}
        out[name]["disengagements_per_km_by_cause"] = {c: (n / s["km"] if s["km"] > 0 else None)
                                                       for c, n in s["disengagements_by_cause"].items()}
    return out


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
    summary["splits"] = split_summary(out, float(cfg.data.val_fraction))
    summary.update(
        out=str(out), shards=len(manifest["shards"]), complete=bool(manifest["complete"]),
        generate_seconds=elapsed, workers=int(cfg.workers),
        frames_this_run=summary["frames"] - before,
        frames_per_second=(summary["frames"] - before) / elapsed if elapsed > 0 else None,
    )
    print(format_summary(summary))
    for name in ("train", "val"):
        sp = summary["splits"][name]
        print(f"{name} split (val_fraction {summary['splits']['val_fraction']:g}): {sp['segments']} segments, "
              f"{sp['km']:.2f} km, by cause {sp['disengagements_by_cause']}")
    print(f"wrote {summary['shards']} shards to {out} in {elapsed:.1f} s with {cfg.workers} workers")
    write_metrics(run_dir, summary)
    return summary
