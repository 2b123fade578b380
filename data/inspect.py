"""``drivegpt data inspect shards=...``: what is in a fleet.

Prints and writes to ``run_dir/metrics.json`` the fleet summary (``fleet_summary``):
segments, frames, hours, km (integrated speed), engaged fraction (of time) and engaged km,
disengagements by cause, per 100 km driven and per 100 engaged km (disengagements only
happen while engaged, so the engaged-km rate is the field metric), mean speed. Also writes
``run_dir/contact_sheet.png``: sample frames from the first segments (evenly spaced plus
every disengagement frame), each labelled with segment id, frame index, speed and state
(ENGAGED in green, human driving in grey, the disengagement cause in red).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
from einops import rearrange

from drivegpt.data.schema import CAUSE_NAMES, Segment
from drivegpt.data.shards import BadInput, ShardError, decode_sample, expand_urls, raw_samples, read_manifest
from drivegpt.runs import write_png


class FleetStats:
    """Accumulates the fleet summary one segment at a time (frames not needed)."""

    def __init__(self):
        self.segments = 0
        self.frames = 0
        self.seconds = 0.0
        self.meters = 0.0
        self.engaged_seconds = 0.0
        self.engaged_meters = 0.0
        self.causes: Counter = Counter()
        self.sources: Counter = Counter()

    def add(self, seg: Segment) -> None:
        T = len(seg)
        fps = float(seg.meta["fps"])
        # each frame lasts until the next one; the last lasts one nominal frame period
        dt = np.append(np.diff(seg.times), 1.0 / fps)
        dist = np.abs(seg.speed.astype(np.float64)) * dt
        self.segments += 1
        self.frames += T
        self.seconds += float(dt.sum())
        self.meters += float(dist.sum())
        self.engaged_seconds += float(dt[seg.engaged].sum())
        self.engaged_meters += float(dist[seg.engaged].sum())
        for code in seg.disengage[seg.disengage != 0]:
            self.causes[CAUSE_NAMES[int(code) - 1]] += 1
        self.sources[str(seg.meta.get("source", "?"))] += 1

    def summary(self) -> dict:
        km, ekm = self.meters / 1000, self.engaged_meters / 1000
        total = sum(self.causes.values())
        by_cause = {c: int(self.causes.get(c, 0)) for c in CAUSE_NAMES}

        def per100(n, d):
            return n / d * 100 if d > 0 else None

        return {
            "segments": self.segments,
            "frames": self.frames,
            "hours": self.seconds / 3600,
            "km": km,
            "engaged_km": ekm,
            "engaged_fraction": self.engaged_seconds / self.seconds if self.seconds else None,
            "mean_speed_kmh": km / (self.seconds / 3600) if self.seconds else None,
            "disengagements": total,
            "disengagements_by_cause": by_cause,
            "disengagements_per_100km": per100(total, km),
            "disengagements_per_100km_by_cause": {c: per100(n, km) for c, n in by_cause.items()},
            "disengagements_per_100_engaged_km": per100(total, ekm),
            "disengagements_per_100_engaged_km_by_cause": {c: per100(n, ekm) for c, n in by_cause.items()},
            "sources": dict(self.sources),
        }


def fleet_summary(segments: Iterable[Segment]) -> dict:
    stats = FleetStats()
    for seg in segments:
        stats.add(seg)
    return stats.summary()


def format_summary(s: dict) -> str:
    """A few human-readable lines of a fleet summary."""
    def f(x, spec=".1f"):
        return "n/a" if x is None else format(x, spec)

    causes = ", ".join(f"{c} {s['disengagements_by_cause'][c]} ({f(s['disengagements_per_100_engaged_km_by_cause'][c])}/100 engaged km)"
                       for c in CAUSE_NAMES)
    return "\n".join([
        f"fleet: {s['segments']} segments, {s['frames']} frames, {f(s['hours'], '.3f')} h, {f(s['km'], '.2f')} km "
        f"(mean {f(s['mean_speed_kmh'])} km/h)",
        f"engaged: {f(100 * s['engaged_fraction'] if s['engaged_fraction'] is not None else None)}% of time, "
        f"{f(s['engaged_km'], '.2f')} km",
        f"disengagements: {s['disengagements']} = {f(s['disengagements_per_100km'])}/100 km, "
        f"{f(s['disengagements_per_100_engaged_km'])}/100 engaged km",
        f"by cause: {causes}",
    ])


# ------------------------------------------------------------------------------------------
# contact sheet

STATE_COLORS = {"ENGAGED": (40, 170, 40), "HUMAN": (120, 120, 120)}  # RGB
CAUSE_COLOR = (220, 40, 40)


def pick_frames(seg: Segment, per_segment: int) -> list[int]:
    """Disengagement frames (up to half of ``per_segment``, at least one), then evenly spaced ones."""
    T = len(seg)
    picks = [int(i) for i in np.flatnonzero(seg.disengage)][:max(1, per_segment // 2)][:per_segment]
    for i in np.linspace(0, T - 1, per_segment).round().astype(int):
        if len(picks) >= per_segment:
            break
        if int(i) not in picks:
            picks.append(int(i))
    return sorted(picks)


def label_tile(frame: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]], tile_w: int = 256) -> np.ndarray:
    """uint8 [h,w,3] -> frame scaled to ``tile_w`` wide with a text strip above: [h'+strip, tile_w, 3]."""
    h, w = frame.shape[:2]
    th = max(1, int(round(h * tile_w / w)))
    img = cv2.resize(frame, (tile_w, th), interpolation=cv2.INTER_NEAREST if tile_w >= w else cv2.INTER_AREA)
    strip = np.full((14 * len(lines) + 4, tile_w, 3), 255, np.uint8)
    for k, (text, color) in enumerate(lines):
        cv2.putText(strip, text, (3, 13 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    return np.concatenate([strip, img], axis=0)


def frame_labels(seg: Segment, i: int) -> list[tuple[str, tuple[int, int, int]]]:
    if seg.disengage[i]:
        state, color = f"DISENGAGE {CAUSE_NAMES[int(seg.disengage[i]) - 1]}", CAUSE_COLOR
    elif seg.engaged[i]:
        state, color = "ENGAGED", STATE_COLORS["ENGAGED"]
    else:
        state, color = "HUMAN", STATE_COLORS["HUMAN"]
    return [(f"{seg.segment_id[:34]}", (0, 0, 0)),
            (f"t={seg.times[i]:.2f}s  #{i}  {seg.speed[i] * 3.6:.0f} km/h", (0, 0, 0)),
            (state, color)]


def contact_sheet(tiles: list[np.ndarray], cols: int = 4) -> np.ndarray:
    """Labelled tiles (same shape) -> one uint8 RGB grid image, blank-padded."""
    n = len(tiles)
    rows = math.ceil(n / cols)
    blank = np.full_like(tiles[0], 255)
    grid = np.stack(tiles + [blank] * (rows * cols - n))
    grid[:, -1] = 200  # 1-px separators
    grid[:, :, -1] = 200
    return rearrange(grid, "(r c) h w ch -> (r h) (c w) ch", c=cols)


def inspect_shards(shards, n_frames: int = 24, per_segment: int = 4, skip_bad: bool = False,
                   sheet_path: str | Path | None = None) -> dict:
    """Summary of the shards at ``shards`` (+ contact sheet PNG of ``n_frames`` tiles)."""
    stats = FleetStats()
    handler = BadInput(skip_bad)
    urls = expand_urls(shards)
    tiles: list[np.ndarray] = []
    # spread the sheet over the fleet when its size is known from a manifest
    every = 1
    try:
        parents = {str(Path(u).parent) for u in urls}
        if len(parents) == 1:
            n_total = int(read_manifest(parents.pop()).get("samples", 0))
            every = max(1, n_total // max(1, math.ceil(n_frames / max(1, per_segment))))
    except (FileNotFoundError, ValueError, OSError):
        pass
    for j, sample in enumerate(raw_samples(urls, handler)):
        try:
            want = len(tiles) < n_frames and sheet_path is not None and j % every == 0
            seg = decode_sample(sample, frames=want)
        except ShardError as e:
            handler(e)  # raises unless skip_bad (then counted)
            continue
        stats.add(seg)
        if want:
            for i in pick_frames(seg, min(per_segment, n_frames - len(tiles))):
                tiles.append(label_tile(seg.frames[i], frame_labels(seg, i)))
    out = stats.summary()
    out["shard_urls"] = len(urls)
    out["skipped_bad"] = int(handler.stats["skipped"])
    if sheet_path is not None and tiles:
        write_png(sheet_path, contact_sheet(tiles))
        out["contact_sheet"] = str(sheet_path)
        out["contact_sheet_frames"] = len(tiles)
    return out
