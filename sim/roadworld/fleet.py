"""One synthetic-fleet segment: ``drive_segment(seed, ...) -> data.schema.Segment``.

The randomized autopilot drives under the fleet's takeover protocol (``takeover.Takeover``):
the ground-truth safety driver disengages it (cause logged on that frame, which is still
engaged); the competent human drives for ``takeover_seconds`` and re-engages once the car is
centered and the lead is at a safe distance. Deterministic per seed (road, traffic, lighting and autopilot all derive from it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drivegpt.data.schema import Cause, Segment, validate

from .config import RoadWorldConfig
from .controllers import Autopilot
from .takeover import Takeover
from .world import World

TRAFFIC_COLUMNS = ["s", "lateral", "speed", "length"]


def make_config(cfg_sim: Any = None, **overrides) -> RoadWorldConfig:
    if isinstance(cfg_sim, RoadWorldConfig):
        return cfg_sim.replace(**overrides) if overrides else cfg_sim
    return RoadWorldConfig.from_dict(cfg_sim, **overrides)


def segment_id(seed: int) -> str:
    return f"proc_{int(seed):06d}"


def drive_segment(seed: int, seconds: float = 60.0, cfg_sim: Any = None, height: int | None = None,
                  width: int | None = None, quality: float | None = None) -> Segment:
    """Drive ``seconds`` of road ``seed``; returns a validated Segment with extras
    ``lane_mask`` bool [T, H, W] and ``traffic`` float32 [T, N, 4] (columns TRAFFIC_COLUMNS).
    ``quality`` fixes the autopilot's quality (else drawn from the seed)."""
    sizes = {k: v for k, v in dict(height=height, width=width).items() if v is not None}
    cfg = make_config(cfg_sim, seconds=float(seconds), **sizes)
    world = World(cfg, seed)
    lane0 = world.lane  # the start lane (lane changes move world.lane)
    ap = Autopilot(seed, cfg.autopilot, cfg.fps, quality=quality, behaviours=cfg.autopilot.behaviours.enabled)
    takeover = Takeover(cfg)
    T = int(round(seconds * cfg.fps))
    H, W = world.camera.height, world.camera.width
    frames = np.empty((T, H, W, 3), np.uint8)
    lane_mask = np.empty((T, H, W), bool)
    traffic = np.empty((T, cfg.traffic.vehicles, 4), np.float32)
    world_pose = np.empty((T, 6), np.float64)
    rel_pose = np.zeros((T, 6), np.float64)
    speed = np.empty(T, np.float64)
    engaged = np.zeros(T, bool)
    disengage = np.zeros(T, np.int8)
    events = []
    for t in range(T):
        frames[t], lane_mask[t] = world.render(mask=True)
        traffic[t] = world.traffic_array()
        world_pose[t] = world.world_pose6()
        speed[t] = world.state[0]
        m = world.metrics()
        cause = takeover.turn(m, ap, world)
        if cause is not None:
            engaged[t] = True
            if cause != Cause.NONE:
                disengage[t] = int(cause)
                events.append(dict(frame=t, cause=cause.name, reason=takeover.reason,
                                   speed=float(m["speed"]), lane_offset=float(m["lane_offset"])))
        action = ap.act(world) if takeover.engaged else takeover.human_act(world)
        if t < T - 1:  # the last frame has no next frame: its rel_pose stays zero
            rel_pose[t] = world.step(action)
    meta = dict(
        source="procedural",
        segment_id=segment_id(seed),
        fps=cfg.fps,
        camera=world.camera.intrinsics(),
        vehicle=world.params.to_dict(),
        traffic_columns=TRAFFIC_COLUMNS,
        disengagements=events,
        # the driver's cruise set speed: the autopilot's target, before curves and leads slow it
        cruise_speed=float(world.road.speed_limit * float(ap.params.get("speed_factor", 1.0))),
        sim=dict(seed=int(seed), config=cfg.to_dict(), height=H, width=W, seconds=float(seconds),
                 lane=lane0, n_lanes=world.road.n_lanes, speed_limit=world.road.speed_limit,
                 s0=float(world.road.project(world_pose[0, 0], world_pose[0, 1], 40.0)[0]),
                 autopilot=ap.params, brightness=world.look.brightness,
                 fog_distance=world.look.fog_distance,
                 behaviours=None if ap.behaviours is None else ap.behaviours.log()),
    )
    seg = Segment(frames=frames, rel_pose=rel_pose.astype(np.float32),
                  world_pose=world_pose.astype(np.float32), speed=speed.astype(np.float32),
                  engaged=engaged, disengage=disengage, times=np.arange(T, dtype=np.float64) / cfg.fps,
                  meta=meta, extras=dict(lane_mask=lane_mask, traffic=traffic))
    return validate(seg, fps=cfg.fps)


def road_deviation(seg: Segment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the road does not explain, from a road-world segment's logged poses and its road
    (rebuilt from the meta): per frame but the last, yaw rate - road curvature x speed
    [rad/s]; per frame, the road lateral [m] and the offset from the centre of the lane the
    ego is in [m]."""
    from .replay import world_from_meta

    road = world_from_meta(seg.meta, 8, 16).road
    wp = seg.world_pose.astype(np.float64)
    s = float(seg.meta["sim"]["s0"])
    rk, lat = np.empty(len(seg)), np.empty(len(seg))
    for t in range(len(seg)):
        s, lat[t], _, rk[t] = road.project(wp[t, 0], wp[t, 1], s)
    yaw_rate = seg.rel_pose[:-1, 5].astype(np.float64) * float(seg.meta["fps"])
    dev = yaw_rate - rk[:-1] * seg.speed[:-1].astype(np.float64)
    return dev, lat, lat - road.lane_center(road.lane_of(lat))


def fleet_stats(segments) -> dict:
    """Fleet summary of Segments: hours, km, engaged fraction, autopilot disengagements by
    cause (counts and per 100 km of driving)."""
    hours = km = engaged = frames = 0.0
    counts = {c.name: 0 for c in Cause if c != Cause.NONE}
    for seg in segments:
        fps = float(seg.meta["fps"])
        hours += len(seg) / fps / 3600.0
        km += float(seg.speed.astype(np.float64).sum()) / fps / 1000.0
        engaged += float(seg.engaged.sum())
        frames += len(seg)
        for code in seg.disengage[seg.disengage != 0].tolist():
            counts[Cause(code).name] += 1
    per100 = {k: (100.0 * v / km if km > 0 else 0.0) for k, v in counts.items()}
    return dict(hours=hours, km=km, engaged_fraction=engaged / max(frames, 1.0),
                disengagements=counts, disengagements_total=sum(counts.values()),
                per_100km=per100, per_100km_total=sum(per100.values()))
