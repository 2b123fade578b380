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
from drivegpt.data.shards import ShardError, read_manifest
from drivegpt.data.shard_reading import BadInput, decode_sample, expand_urls, raw_samples
from drivegpt.runs import write_png


LAT_BINS = np.linspace(0.0, 10.0, 1001)  # m/s^2, 0.01 wide (the last bin takes everything above)
JERK_BINS = np.linspace(0.0, 20.0, 2001)  # m/s^3, 0.01 wide
JERK_WINDOW_S = 0.25  # jerk = the change of the accel (from the logged speed) over this window, as a comfort rule reads it
KEPT_MARGIN_S = 2.0  # engaged frames this close before a disengagement are not "kept" (as BC's default)


class FleetStats:
    """Accumulates the fleet summary one segment at a time (frames not needed).

    Besides counts and rates it keeps histograms of the lateral acceleration (speed x yaw rate, from
    ``rel_pose``) and of the jerk (the change of the accel, from the logged speed, over
    ``JERK_WINDOW_S``) of the *kept* engaged frames: no disengagement within ``KEPT_MARGIN_S`` after
    them, the driving the safety drivers accepted. Their 99th / 99.9th percentiles are the fleet's
    comfort envelope (``rl.policy.max_lat_accel`` and ``rl.policy.max_jerk``, README "Policy",
    *Lateral envelope*, *Jerk envelope*)."""

    def __init__(self):
        self.segments = 0
        self.frames = 0
        self.seconds = 0.0
        self.meters = 0.0
        self.engaged_seconds = 0.0
        self.engaged_meters = 0.0
        self.causes: Counter = Counter()
        self.sources: Counter = Counter()
        self.lat_hist = np.zeros(len(LAT_BINS) - 1, np.int64)
        self.jerk_hist = np.zeros(len(JERK_BINS) - 1, np.int64)

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
        if T > 1:  # lateral accel of the move t -> t+1 = v x yaw rate; kept: engaged, no takeover soon after
            step = np.diff(seg.times)
            lat = np.abs(seg.speed[:-1].astype(np.float64) * seg.rel_pose[:-1, 5] / np.maximum(step, 1e-6))
            last_event = np.full(T, np.inf)
            ev = np.flatnonzero(seg.disengage != 0)
            if ev.size:  # time to the next disengagement at or after each frame
                nxt = np.searchsorted(ev, np.arange(T))
                ok = nxt < ev.size
                last_event[ok] = seg.times[ev[np.minimum(nxt, ev.size - 1)]][ok] - seg.times[ok]
            kept = seg.engaged[:-1] & (last_event[:-1] > KEPT_MARGIN_S)
            self.lat_hist += np.histogram(np.minimum(lat[kept], LAT_BINS[-1]), LAT_BINS)[0]
            w = max(1, int(round(JERK_WINDOW_S * fps)))
            if T > w + 2:  # jerk over the window ending at each frame; kept: engaged through it, kept at its end
                t = seg.times.astype(np.float64)
                accel = np.gradient(seg.speed.astype(np.float64), t)
                jerk = np.abs(accel[w:] - accel[:-w]) / np.maximum(t[w:] - t[:-w], 1e-6)
                kept_j = seg.engaged[:-w] & seg.engaged[w:] & (last_event[w:] > KEPT_MARGIN_S)
                self.jerk_hist += np.histogram(np.minimum(jerk[kept_j], JERK_BINS[-1]), JERK_BINS)[0]

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
            "kept_lat_accel_p99": self.lat_percentile(99.0),
            "kept_lat_accel_p999": self.lat_percentile(99.9),
            "kept_jerk_p99": _percentile(self.jerk_hist, JERK_BINS, 99.0),
            "kept_jerk_p999": _percentile(self.jerk_hist, JERK_BINS, 99.9),
        }

    def lat_percentile(self, q: float) -> float | None:
        """The q-th percentile (m/s^2, to the bin's upper edge) of the kept engaged frames' lateral accel."""
        return _percentile(self.lat_hist, LAT_BINS, q)


def _percentile(hist: np.ndarray, bins: np.ndarray, q: float) -> float | None:
    """The q-th percentile of a histogram, to its bin's upper edge (None when empty)."""
    n = int(hist.sum())
    if n == 0:
        return None
    i = int(np.searchsorted(np.cumsum(hist), q / 100.0 * n))
    return float(bins[min(i + 1, len(bins) - 1)])


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
        f"lateral accel of kept engaged frames (none within {KEPT_MARGIN_S:g} s before a takeover): "
        f"p99 {f(s.get('kept_lat_accel_p99'), '.2f')}, p99.9 {f(s.get('kept_lat_accel_p999'), '.2f')} m/s^2",
        f"jerk of kept engaged frames ({JERK_WINDOW_S:g} s windows): "
        f"p99 {f(s.get('kept_jerk_p99'), '.2f')}, p99.9 {f(s.get('kept_jerk_p999'), '.2f')} m/s^3",
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


def verify_shards(urls: list[str]) -> dict:
    """Check every local shard against its directory's manifest.json.

    Returns {"verified": shards whose bytes and sha256 match, "unverified": urls without a
    manifest to check against (hand-made shards, remote URLs), "problems": {url: what is wrong}
    (checksum or size mismatch, not listed), "missing": listed shards absent on disk,
    "expected": {url: manifest entry}}.
    """
    from drivegpt.data.shards import MANIFEST, _sha256

    out: dict = {"verified": [], "unverified": [], "problems": {}, "missing": [], "expected": {}}
    by_dir: dict[Path, list[str]] = {}
    for u in urls:
        if str(u).startswith("pipe:") or "://" in str(u) or not Path(u).is_file():
            out["unverified"].append(u)
        else:
            by_dir.setdefault(Path(u).parent, []).append(u)
    for d, us in by_dir.items():
        if not (d / MANIFEST).exists():
            out["unverified"] += us
            continue
        man = read_manifest(d)
        entries = {e["name"]: e for e in man.get("shards", [])}
        for u in us:
            e = entries.get(Path(u).name)
            if e is None:
                out["problems"][u] = f"{u}: not listed in {d / MANIFEST} (a stray file or a different write)"
                continue
            out["expected"][u] = e
            size = Path(u).stat().st_size
            digest = _sha256(Path(u))
            if size != e.get("bytes") or digest != e.get("sha256"):
                out["problems"][u] = (f"{u}: does not match {d / MANIFEST}: {size} bytes, sha256 {digest[:16]}... "
                                      f"where the manifest lists {e.get('bytes')} bytes, sha256 "
                                      f"{str(e.get('sha256'))[:16]}... (changed or damaged after it was written)")
            else:
                out["verified"].append(u)
        listed = {str(d / n) for n in entries}
        out["missing"] += sorted(n for n in listed if not Path(n).exists())
    return out


def inspect_shards(shards, n_frames: int = 24, per_segment: int = 4, skip_bad: bool = False,
                   sheet_path: str | Path | None = None, decode_all: bool = False) -> dict:
    """Summary of the shards at ``shards`` (+ contact sheet PNG of ``n_frames`` tiles).

    Every local shard is verified against its directory's manifest (size, sha256, sample count
    and segment ids); a shard that fails, or has no manifest to check against, has every
    sample decoded in full (videos too), as has every shard with ``decode_all``. Bad input
    raises ShardError naming the file (and sample key, member); with ``skip_bad`` each bad
    sample or shard is counted once (``skipped_bad``, ``bad_shards``) and the summary is of
    the rest.
    """
    stats = FleetStats()
    handler = BadInput(skip_bad)
    urls = expand_urls(shards)
    check = verify_shards(urls)
    bad_shards = dict(check["problems"])
    for path in check["missing"]:
        bad_shards[path] = f"{path}: listed in the manifest but missing on disk"
    for msg in bad_shards.values():
        handler(ShardError(msg))  # raises unless skip_bad (then counted)
    full = set(check["unverified"]) | set(check["problems"])
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
    seen: dict[str, list[str]] = {}
    for j, sample in enumerate(raw_samples(urls, handler)):
        url = sample.get("__url__", "?")
        seen.setdefault(url, []).append(sample.get("__key__"))
        try:
            want = len(tiles) < n_frames and sheet_path is not None and j % every == 0
            seg = decode_sample(sample, frames=want or decode_all or url in full)
        except ShardError as e:
            handler(e)  # raises unless skip_bad (then counted)
            continue
        stats.add(seg)
        if want:
            for i in pick_frames(seg, min(per_segment, n_frames - len(tiles))):
                tiles.append(label_tile(seg.frames[i], frame_labels(seg, i)))
    for url, e in check["expected"].items():  # samples the manifest lists but the tar does not hold
        ids = [str(k) for k in seen.get(url, [])]
        lost = [k for k in e.get("segment_ids", []) if k not in ids]
        if lost and url not in bad_shards:  # a damaged shard is already counted once
            msg = (f"{url}: holds {len(ids)} of the {e.get('samples')} samples its manifest lists "
                   f"(missing {lost[:5]})")
            bad_shards[url] = msg
            handler(ShardError(msg))
    out = stats.summary()
    out["shard_urls"] = len(urls)
    out["shards_verified"] = len(check["verified"])
    out["shards_unverified"] = len(check["unverified"])
    out["bad_shards"] = len(bad_shards)
    out["skipped_bad"] = int(handler.stats["skipped"])
    out["errors"] = list(handler.stats["errors"])
    if sheet_path is not None and tiles:
        write_png(sheet_path, contact_sheet(tiles))
        out["contact_sheet"] = str(sheet_path)
        out["contact_sheet_frames"] = len(tiles)
    return out


def format_checks(s: dict) -> str:
    """One line: shards verified against their manifest, bad shards, bad samples skipped."""
    return (f"checked: {s.get('shards_verified', 0)} of {s.get('shard_urls', 0)} shards match their manifest "
            f"({s.get('shards_unverified', 0)} without one, decoded in full); {s.get('bad_shards', 0)} bad "
            f"shard(s); {s.get('skipped_bad', 0)} bad input(s) skipped")
