"""Frame windows for calibration (train split) and verification (held-out val split).

Preferred source: the fleet shards (``data.shards``), split by segment with
``drivegpt.data.loaders.split_of`` (THE held-out split). Without shards: segments driven in
the procedural road world (``drivegpt.sim.roadworld.drive_segment``; seeds split the same
way). ``export.frames.source=synthetic``: deterministic synthetic road images (never noise).
Each window: K frames at the configured stride, oldest first (``data.loaders.window_starts`` /
``window_frames``), resized with ``drivegpt.frameops.resize``, the speed at the last one, and
the cruise set speed there (m/s, NaN = unknown): a shard segment's ``meta.cruise_speed``, as
the training windows carry it (``data.loaders.cruise_speed_of``); in the road world the road's
speed limit, the set speed the closed-loop evaluation gives the policy (``rl.evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from omegaconf import OmegaConf

from drivegpt.data.loaders import cruise_speed_of, split_of, window_frames, window_starts
from drivegpt.data.shard_reading import expand_urls, iter_samples
from drivegpt.frameops import resize
from drivegpt.sim.roadworld import drive_segment, segment_id


@dataclass
class Windows:
    frames: np.ndarray  # uint8 [N, K, H, W, 3]
    speed: np.ndarray  # float32 [N, 1]
    cruise: np.ndarray  # float32 [N, 1] cruise set speed, m/s; NaN = unknown
    source: str  # "fleet shards <spec>", "roadworld", "synthetic"
    split: str  # "train" | "val"


def _windows_of(frames: np.ndarray, speed: np.ndarray, k: int, stride: int, per_segment: int,
                rng: np.random.Generator) -> Iterator[tuple[np.ndarray, float]]:
    starts = window_starts(len(frames), k, stride, step=1, next_frame=False)
    if len(starts) == 0:
        return
    picked = rng.choice(len(starts), size=min(per_segment, len(starts)), replace=False)
    for s in sorted(starts[picked]):
        idx = window_frames(s, k, stride)
        yield frames[idx], float(speed[idx[-1]])


def _collect(segments, split_of, split, count, shape, stride, per_segment, seed,
             cruise_of) -> tuple[list, list, list]:
    """Windows of ``split``'s segments: (frames, speeds, cruise set speeds); ``cruise_of(segment)``
    is the segment's set speed (m/s, NaN = unknown), the same at every frame."""
    k, h, w, _ = shape
    rng = np.random.default_rng(seed)
    out_f, out_s, out_c = [], [], []
    for seg in segments:
        if split_of(seg.segment_id) != split:
            continue
        frames = resize(np.asarray(seg.frames, dtype=np.uint8), (h, w))
        cruise = cruise_of(seg)
        for win, v in _windows_of(frames, np.asarray(seg.speed), k, stride, per_segment, rng):
            out_f.append(win)
            out_s.append(v)
            out_c.append(cruise)
            if len(out_f) >= count:
                return out_f, out_s, out_c
    return out_f, out_s, out_c


def _road_speed_limit(seg) -> float:
    """A road-world segment's speed limit (m/s; ``meta.sim.speed_limit``), NaN if it has none."""
    c = (seg.meta.get("sim") or {}).get("speed_limit")
    return float(c) if c is not None else float("nan")


def fleet_windows(shards: str, split: str, count: int, shape, stride: int, val_fraction: float,
                  per_segment: int = 8, seed: int = 0, skip_bad: bool = False) -> Windows:
    """Windows of the shards' ``split`` segments; cruise: each segment's ``meta.cruise_speed`` (NaN
    where the source did not log it), what the training windows' ``cruise_speed`` carries."""
    segs = iter_samples(expand_urls(shards), skip_bad=skip_bad,
                        keep=lambda sid: split_of(sid, val_fraction) == split)  # decode this split's videos only
    f, s, c = _collect(segs, lambda sid: split_of(sid, val_fraction), split, count, shape, stride,
                       per_segment, seed, cruise_of=lambda seg: cruise_speed_of(seg.meta))
    return _pack(f, s, c, f"fleet shards {shards}", split)


def roadworld_windows(cfg_sim, split: str, count: int, shape, stride: int, val_fraction: float,
                      seconds: float = 10.0, per_segment: int = 8, seed: int = 0) -> Windows:
    """Drive road-world segments of ``split`` only (chosen by ``split_of(segment_id(seed))`` before
    driving, the same split the fleet shards of those seeds get). Cruise: the road's speed limit,
    the set speed the policy is given in the road world (``rl.evaluate``)."""
    _, h, w, _ = shape
    seeds = (i for i in range(seed, seed + 100_000) if split_of(segment_id(i), val_fraction) == split)

    def segments():
        for i in seeds:
            yield drive_segment(i, seconds, cfg_sim, h, w)

    f, s, c = _collect(segments(), lambda sid: split_of(sid, val_fraction), split, count, shape, stride,
                       per_segment, seed, cruise_of=_road_speed_limit)
    return _pack(f, s, c, "roadworld (sim.roadworld.drive_segment)", split)


def synthetic_windows(split: str, count: int, shape, seed: int = 0) -> Windows:
    """Procedural road scenes (sky, road, lane markings, cars, lighting), moving over K frames.
    Cruise set speeds: a little above each window's speed, every fourth unknown (NaN), so both
    of the policy's cruise paths are exercised (drawn apart: the frames and speeds do not change)."""
    k, h, w, _ = shape
    rng = np.random.default_rng(seed + (1_000_003 if split == "val" else 0))
    frames = np.empty((count, k, h, w, 3), np.uint8)
    speed = rng.uniform(0.0, 30.0, size=(count, 1)).astype(np.float32)
    for n in range(count):
        sky = rng.uniform(120, 230, 3)
        ground = rng.uniform(40, 120, 3)
        bend = rng.uniform(-0.4, 0.4) * w
        horizon = int(h * rng.uniform(0.35, 0.5))
        cars = [(rng.uniform(-0.3, 0.3), rng.uniform(0.2, 0.9), rng.uniform(0, 255, 3)) for _ in range(rng.integers(0, 3))]
        for t in range(k):
            img = np.empty((h, w, 3), np.float32)
            img[:horizon] = sky * np.linspace(0.8, 1.0, horizon)[:, None, None]
            img[horizon:] = ground
            ys = np.arange(horizon, h)
            depth = (ys - horizon + 1) / (h - horizon)  # 0 far .. 1 near
            centre = w / 2 + bend * (1 - depth) ** 2
            half = 0.05 * w + 0.45 * w * depth
            for y, c, hw, d in zip(ys, centre, half, depth):
                x0, x1 = int(max(c - hw, 0)), int(min(c + hw, w))
                img[y, x0:x1] = 90
                phase = (d * 8 + t * speed[n, 0] / 30.0) % 1.0
                for off in (-hw, hw) + ((0.0,) if phase < 0.5 else ()):
                    xm = int(c + off)
                    if 0 <= xm < w:
                        img[y, max(xm - 1, 0):xm + 1] = 235
            for lat, dist, col in cars:
                d = min(dist + 0.02 * t, 1.0)
                y = int(horizon + d * (h - horizon)) - 1
                cw = max(int(0.25 * w * d), 2)
                cx = int(w / 2 + lat * w * d + bend * (1 - d) ** 2)
                img[max(y - cw // 2, 0):y, max(cx - cw // 2, 0):cx + cw // 2] = col
            img += rng.normal(0, 3, img.shape)
            frames[n, t] = np.clip(img, 0, 255).astype(np.uint8)
    crng = np.random.default_rng([seed, int(split == "val"), 0xC2])
    cruise = np.clip(speed + crng.uniform(-2.0, 8.0, size=(count, 1)), 5.0, 40.0).astype(np.float32)
    cruise[::4] = np.nan
    return Windows(frames, speed, cruise, "synthetic", split)


def _pack(frames: list, speed: list, cruise: list, source: str, split: str) -> Windows:
    if not frames:
        raise ValueError(f"{source}: no {split}-split windows found (too few or too short segments?)")
    return Windows(np.stack(frames).astype(np.uint8), np.asarray(speed, np.float32)[:, None],
                   np.asarray(cruise, np.float32)[:, None], source, split)


def get_windows(cfg, split: str, count: int, shape) -> Windows:
    """Windows for ``split`` from the configured source (``export.frames.source``: auto|fleet|roadworld|synthetic)."""
    source = str(cfg.export.frames.source)
    has_shards = "shards" in cfg.data and not OmegaConf.is_missing(cfg.data, "shards") \
        and cfg.data.shards is not None
    shards = cfg.data.shards if has_shards else None
    seed = int(cfg.export.frames.seed)
    per_segment = int(cfg.export.frames.per_segment)
    common = dict(split=split, count=count, shape=shape, stride=int(cfg.data.stride),
                  val_fraction=float(cfg.data.val_fraction), seed=seed, per_segment=per_segment)
    if source == "fleet" or (source == "auto" and has_shards):
        if not has_shards:
            raise ValueError("export.frames.source=fleet but data.shards is not set")
        return fleet_windows(str(shards), skip_bad=bool(cfg.data.get("skip_bad", False)), **common)
    if source in ("roadworld", "auto"):
        return roadworld_windows(cfg.sim, seconds=float(cfg.export.frames.seconds), **common)
    if source == "synthetic":
        return synthetic_windows(split, count, shape, seed)
    raise ValueError(f"export.frames.source={source!r}: expected auto, fleet, roadworld or synthetic")
