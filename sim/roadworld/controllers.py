"""Privileged controllers: a competent ``HumanDriver`` and a randomized-quality ``Autopilot``.

Both read the world's true state (lane geometry, lead car) and return a normalized action
(``sim.vehicle`` scaling). Lateral: pure pursuit on the ego lane's center at a preview
distance. Longitudinal: IDM towards the flow speed (slowing ahead of curves) behind the
lead car, with the command's rate limited (jerk).

``Autopilot`` quality q in [0, 1] (drawn per segment from Beta(a, b)) sets how bad it is:
with b = 1 - q, AR(1) curvature noise (std b * curvature_noise), a curvature bias, a
command delay (up to max_delay), a mis-tuned steering gain and preview, a short following
time gap, accel noise, a looser jerk limit and phantom slow-downs. Good autopilots rarely
disengage; poor ones weave (STEER), tailgate or jerk (BRAKE) or crawl (GAS).

Usage inside the env: ``action = controller.act(env)`` (env, ``env.unwrapped`` or a World).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from drivegpt.sim.vehicle import ACTION_SCALE

from .config import AutopilotConfig


def _world(env):
    for obj in (env, getattr(env, "unwrapped", None)):
        if obj is not None and hasattr(obj, "road") and hasattr(obj, "metrics"):
            return obj
        w = getattr(obj, "world", None)
        if w is not None:
            return w
    raise TypeError(f"controller: cannot find a road world in {type(env).__name__} (reset it first)")


def _pursuit(world, m: dict, preview_time: float, min_preview: float, lateral: float | None = None) -> float:
    """Pure-pursuit curvature towards the ego lane's center (or the road ``lateral`` offset
    when given) ``preview`` metres ahead."""
    v = m["speed"]
    L = max(min_preview, v * preview_time)
    lat = world.road.lane_center(world.lane) if lateral is None else lateral
    x, y = world.road.point(m["s"] + L, lat)
    px, py, yaw = world.pose
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy = float(x) - px, float(y) - py
    fx, fy = c * dx + s * dy, -s * dx + c * dy
    return 2.0 * fy / max(fx * fx + fy * fy, 1.0)


def _idm(world, m: dict, time_gap: float, speed_factor: float, see_lead: bool = True) -> float:
    v = m["speed"]
    road = world.road
    v_t = speed_factor * min(float(road.flow_at(m["s"])), float(road.flow_at(m["s"] + 1.5 * v)))
    v_t = max(v_t, 1.0)
    a = 1.8 * (1 - (v / v_t) ** 4)
    gap = m["lead_gap"]
    if math.isfinite(gap) and see_lead:
        dv = v - m["lead_speed"]
        s_star = 4.0 + v * time_gap + v * dv / (2 * math.sqrt(1.8 * 3.0))
        a -= 1.8 * (max(s_star, 0.0) / max(gap, 0.5)) ** 2
    return float(np.clip(a, -ACTION_SCALE[1], 2.0))


class HumanDriver:
    """A competent driver: well-tuned pursuit, 1.6 s time gap, smooth but decisive."""

    def __init__(self, preview_time: float = 0.9, min_preview: float = 7.0, time_gap: float = 1.6,
                 jerk: float = 3.0):
        self.preview_time, self.min_preview = preview_time, min_preview
        self.time_gap, self.jerk = time_gap, jerk
        self.reset()

    def reset(self):
        self.prev_accel = None

    def act(self, env) -> np.ndarray:
        world = _world(env)
        m = world.metrics()
        k = _pursuit(world, m, self.preview_time, self.min_preview)
        a = _idm(world, m, self.time_gap, 1.0)
        prev = m["accel"] if self.prev_accel is None else self.prev_accel
        ttc = m["lead_gap"] / max(m["speed"] - m["lead_speed"], 1e-3)
        jerk = self.jerk if ttc > 3.0 else 4 * self.jerk  # emergencies beat comfort
        a = prev + float(np.clip(a - prev, -jerk * world.dt, jerk * world.dt))
        self.prev_accel = a
        return np.clip(np.array([k / ACTION_SCALE[0], a / ACTION_SCALE[1]]), -1, 1).astype(np.float32)


class Autopilot:
    """Randomized-quality autopilot; ``quality`` overrides the Beta draw; ``params`` holds the
    drawn settings (logged in the segment meta)."""

    def __init__(self, seed: int = 0, cfg: AutopilotConfig | None = None, fps: int = 20,
                 quality: float | None = None, behaviours: bool = False):
        cfg = cfg or AutopilotConfig()
        self.cfg, self.dt = cfg, 1.0 / fps
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
        r = self.rng
        q = float(r.beta(*cfg.quality)) if quality is None else float(quality)
        b = 1.0 - q
        self.params = dict(
            quality=q,
            curvature_noise=b * cfg.curvature_noise,
            curvature_bias=float(r.normal(0.0, b * cfg.curvature_bias)),
            delay_steps=int(round(b * cfg.max_delay * fps * r.uniform(0.5, 1.0))),
            gain=float(1.0 + b * r.uniform(-0.5, 0.9)),
            preview_time=float(0.9 * (1.0 + b * r.uniform(-0.5, 0.4))),
            time_gap=float(cfg.min_time_gap + q * (1.6 - cfg.min_time_gap) + 0.2 * r.random()),
            accel_noise=b * cfg.accel_noise,
            speed_factor=float(1.0 - 0.15 * b * r.random()),
            jerk=float(3.0 + 8.0 * b),
            slowdown_rate=b * cfg.slowdown_rate,
        )
        # behaviours draw from their own stream: without them the autopilot is unchanged
        self.behaviours = Behaviours(seed, cfg.behaviours, fps) if behaviours else None
        self.reset()

    def reset(self):
        """Clear internal state (call on (re-)engagement)."""
        self.noise = 0.0
        self.buffer: deque = deque()
        self.prev_accel = None
        self.slow_left = 0.0
        if self.behaviours is not None:
            self.behaviours.reset()

    def act(self, env) -> np.ndarray:
        p, dt, r = self.params, self.dt, self.rng
        world = _world(env)
        m = world.metrics()
        rho = math.exp(-dt / self.cfg.noise_time)
        self.noise = rho * self.noise + math.sqrt(1 - rho * rho) * p["curvature_noise"] * float(r.normal())
        bh = self.behaviours
        if bh is not None:
            bh.update(world, m)
        lateral = None if bh is None else bh.lateral(world)
        k = p["gain"] * _pursuit(world, m, p["preview_time"], 6.0, lateral) + p["curvature_bias"] + self.noise
        if self.slow_left <= 0 and r.random() < p["slowdown_rate"] * dt:
            self.slow_left = float(r.uniform(6.0, 12.0))
        factor = p["speed_factor"] * (0.3 if self.slow_left > 0 else 1.0)
        self.slow_left -= dt
        time_gap, see_lead, jerk = p["time_gap"], True, p["jerk"]
        if bh is not None:
            time_gap, see_lead = bh.time_gap(time_gap), bh.sees_lead(m)
        a = _idm(world, m, time_gap, factor, see_lead) + p["accel_noise"] * float(r.normal())
        if bh is not None:
            a, jerk = bh.accel(a, jerk)
        prev = m["accel"] if self.prev_accel is None else self.prev_accel
        a = prev + float(np.clip(a - prev, -jerk * dt, jerk * dt))
        self.prev_accel = a
        cmd = np.clip(np.array([k / ACTION_SCALE[0], a / ACTION_SCALE[1]]), -1, 1).astype(np.float32)
        self.buffer.append(cmd)
        if len(self.buffer) <= p["delay_steps"]:
            return self.buffer[0]
        return self.buffer.popleft()


LATERAL = ("weave", "drift", "lane_change")
LONGITUDINAL = ("brake", "late_brake", "tailgate", "surge")


class Behaviours:
    """Episodes of real-fleet driving the autopilot acts out while engaged (config
    ``BehaviourConfig``): lateral ones move the pursuit target off the lane centre (weave: a
    sinusoid; drift: a slow creep then a snap back; lane change: a smooth move to the centre
    of an adjacent lane with room), longitudinal ones change the accel command (hard brake,
    surge, late brake: the lead is ignored until the time-to-collision is short, then a hard
    brake; tailgate: a short time gap). Each kind's rate is per minute of engaged driving
    times its per-segment propensity. ``episodes`` logs every episode (frames, parameters)."""

    def __init__(self, seed: int, cfg, fps: int):
        self.cfg, self.dt = cfg, 1.0 / fps
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), 11]))
        shape = max(float(cfg.propensity_shape), 1e-3)
        self.propensity = {k: float(self.rng.gamma(shape, 1.0 / shape)) for k in LATERAL + LONGITUDINAL}
        self.episodes: list[dict] = []
        self.reset()

    def reset(self):
        """End any episode (on (re-)engagement)."""
        self.lat: dict | None = None
        self.lon: dict | None = None

    # ------------------------------------------------------------------ episodes
    def _u(self, rng_pair) -> float:
        return float(self.rng.uniform(*rng_pair))

    def _start(self, kinds, world, m):
        """Poisson starts: each kind with probability rate x propensity x dt (one at most)."""
        c = self.cfg
        u = self.rng.random(len(kinds))
        for kind, x in zip(kinds, u):
            if x >= getattr(c, f"{kind}_rate") * self.propensity[kind] / 60.0 * self.dt:
                continue
            ep = self._make(kind, world, m)
            if ep is not None:
                ep.update(kind=kind, start=int(world.t), end=None)
                self.episodes.append(ep)
                return ep
        return None

    def _make(self, kind, world, m) -> dict | None:
        c, road = self.cfg, world.road
        sign = 1.0 if self.rng.random() < 0.5 else -1.0
        if kind == "weave":
            return dict(amplitude=sign * self._u(c.weave_amplitude), period=self._u(c.weave_period),
                        seconds=self._u(c.weave_seconds), age=0.0)
        if kind == "drift":
            return dict(speed=sign * self._u(c.drift_speed), offset=self._u(c.drift_offset), now=0.0,
                        phase="drift", age=0.0)
        if kind == "lane_change":
            lanes = [world.lane + d for d in ((1, -1) if sign > 0 else (-1, 1)) if 0 <= world.lane + d < road.n_lanes]
            lanes = [ln for ln in lanes if self._room(world, m, ln)]
            if not lanes:
                return None
            return dict(from_lane=int(world.lane), to_lane=int(lanes[0]), seconds=self._u(c.lane_change_seconds),
                        from_lat=float(m["lateral"]), age=0.0)
        if kind in ("brake", "surge"):
            mag = self._u(c.brake_decel if kind == "brake" else c.surge_accel)
            return dict(accel=-mag if kind == "brake" else mag, jerk=self._u(c.brake_jerk),
                        seconds=self._u(c.brake_seconds if kind == "brake" else c.surge_seconds), age=0.0)
        if kind == "late_brake":
            return dict(ttc=self._u(c.late_brake_ttc), seconds=self._u(c.late_brake_seconds),
                        decel=self._u(c.brake_decel), jerk=self._u(c.brake_jerk), braking=False, age=0.0)
        if kind == "tailgate":
            return dict(time_gap=self._u(c.tailgate_time_gap), seconds=self._u(c.tailgate_seconds), age=0.0)
        raise ValueError(kind)

    @staticmethod
    def _room(world, m, lane) -> bool:
        """No vehicle in ``lane`` from 15 m behind to 30 m ahead of the ego."""
        tr = world.traffic
        if tr is None:
            return True
        d = tr.s - m["s"]
        return not bool(((tr.lane == lane) & (d > -15.0) & (d < 30.0)).any())

    def _end(self, ep, world):
        ep["end"] = int(world.t)

    def update(self, world, m: dict):
        """Advance the episodes by one frame (call once per ``act``), starting new ones."""
        dt = self.dt
        if self.lat is None:
            self.lat = self._start(LATERAL, world, m)
        elif self.lat["age"] >= self.lat.get("seconds", math.inf) or self.lat.get("phase") == "done":
            if self.lat["kind"] == "lane_change":
                world.lane = self.lat["to_lane"]  # finished without a takeover
            self._end(self.lat, world)
            self.lat = None
        if self.lat is not None:
            ep = self.lat
            ep["age"] += dt
            if ep["kind"] == "drift":
                if ep["phase"] == "drift":
                    ep["now"] += ep["speed"] * dt
                    if abs(ep["now"]) >= ep["offset"]:
                        ep["phase"], ep["back"] = "correct", ep["age"]
                elif ep["age"] - ep["back"] > 2.0:  # snapped back to the centre for 2 s
                    ep["phase"] = "done"
        if self.lon is None:
            self.lon = self._start(LONGITUDINAL, world, m)
        elif self.lon["age"] >= self.lon["seconds"]:
            self._end(self.lon, world)
            self.lon = None
        if self.lon is not None:
            ep = self.lon
            ep["age"] += dt
            if ep["kind"] == "late_brake" and not ep["braking"]:
                closing = m["speed"] - m["lead_speed"]
                if closing > 0 and m["lead_gap"] / closing < ep["ttc"]:
                    ep["braking"] = True  # wakes up: brake hard until no longer closing
                    ep["seconds"] = ep["age"] + 3.0
            elif ep["kind"] == "late_brake" and m["speed"] <= m["lead_speed"]:
                ep["seconds"] = min(ep["seconds"], ep["age"])

    def lateral(self, world) -> float | None:
        """Road lateral offset the pursuit aims at (None: the lane centre)."""
        ep = self.lat
        if ep is None:
            return None
        centre = float(world.road.lane_center(world.lane))
        if ep["kind"] == "weave":
            t = ep["age"]
            env = min(1.0, t / 1.0, max(ep["seconds"] - t, 0.0) / 1.0)  # 1 s ramps in and out
            return centre + env * ep["amplitude"] * math.sin(2 * math.pi * t / ep["period"])
        if ep["kind"] == "drift":
            return centre + (ep["now"] if ep["phase"] == "drift" else 0.0)
        # lane change: smoothstep from where it started to the target lane's centre
        x = min(ep["age"] / ep["seconds"], 1.0)
        f = x * x * (3 - 2 * x)
        to = float(world.road.lane_center(ep["to_lane"]))
        return ep["from_lat"] + f * (to - ep["from_lat"])

    def time_gap(self, time_gap: float) -> float:
        ep = self.lon
        return min(time_gap, ep["time_gap"]) if ep is not None and ep["kind"] == "tailgate" else time_gap

    def sees_lead(self, m: dict) -> bool:
        ep = self.lon
        return not (ep is not None and ep["kind"] == "late_brake" and not ep["braking"])

    def accel(self, a: float, jerk: float) -> tuple[float, float]:
        """(accel command, jerk limit) after the longitudinal episode."""
        ep = self.lon
        if ep is None:
            return a, jerk
        if ep["kind"] in ("brake", "surge"):
            return (min(a, ep["accel"]) if ep["accel"] < 0 else max(a, ep["accel"])), ep["jerk"]
        if ep["kind"] == "late_brake" and ep["braking"]:
            return min(a, -ep["decel"]), ep["jerk"]
        return a, jerk

    def takeover_lane(self, world) -> int:
        """The lane the human drives in after a disengagement: a lane change in progress is
        completed with probability ``lane_change_complete`` (else the human returns)."""
        ep, lane = self.lat, int(world.lane)
        if ep is not None and ep["kind"] == "lane_change":
            done = bool(self.rng.random() < self.cfg.lane_change_complete)
            ep["taken_over"] = "completed" if done else "aborted"
            if done:
                lane = int(ep["to_lane"])
        for ep in (self.lat, self.lon):
            if ep is not None:
                ep.setdefault("taken_over", True)
                self._end(ep, world)
        self.reset()
        return lane

    def log(self) -> dict:
        """JSON-ready summary for the segment meta."""
        eps = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in e.items()
                if k not in ("age", "now", "phase", "back", "braking")} for e in self.episodes]
        counts = {k: sum(e["kind"] == k for e in self.episodes) for k in LATERAL + LONGITUDINAL}
        return dict(propensity={k: round(v, 4) for k, v in self.propensity.items()}, counts=counts,
                    episodes=eps)
