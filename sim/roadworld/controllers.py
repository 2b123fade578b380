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


def _pursuit(world, m: dict, preview_time: float, min_preview: float) -> float:
    """Pure-pursuit curvature towards the ego lane's center ``preview`` metres ahead."""
    v = m["speed"]
    L = max(min_preview, v * preview_time)
    x, y = world.road.point(m["s"] + L, world.road.lane_center(world.lane))
    px, py, yaw = world.pose
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy = float(x) - px, float(y) - py
    fx, fy = c * dx + s * dy, -s * dx + c * dy
    return 2.0 * fy / max(fx * fx + fy * fy, 1.0)


def _idm(world, m: dict, time_gap: float, speed_factor: float) -> float:
    v = m["speed"]
    road = world.road
    v_t = speed_factor * min(float(road.flow_at(m["s"])), float(road.flow_at(m["s"] + 1.5 * v)))
    v_t = max(v_t, 1.0)
    a = 1.8 * (1 - (v / v_t) ** 4)
    gap = m["lead_gap"]
    if math.isfinite(gap):
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
                 quality: float | None = None):
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
        self.reset()

    def reset(self):
        """Clear internal state (call on (re-)engagement)."""
        self.noise = 0.0
        self.buffer: deque = deque()
        self.prev_accel = None
        self.slow_left = 0.0

    def act(self, env) -> np.ndarray:
        p, dt, r = self.params, self.dt, self.rng
        world = _world(env)
        m = world.metrics()
        rho = math.exp(-dt / self.cfg.noise_time)
        self.noise = rho * self.noise + math.sqrt(1 - rho * rho) * p["curvature_noise"] * float(r.normal())
        k = p["gain"] * _pursuit(world, m, p["preview_time"], 6.0) + p["curvature_bias"] + self.noise
        if self.slow_left <= 0 and r.random() < p["slowdown_rate"] * dt:
            self.slow_left = float(r.uniform(6.0, 12.0))
        factor = p["speed_factor"] * (0.3 if self.slow_left > 0 else 1.0)
        self.slow_left -= dt
        a = _idm(world, m, p["time_gap"], factor) + p["accel_noise"] * float(r.normal())
        prev = m["accel"] if self.prev_accel is None else self.prev_accel
        a = prev + float(np.clip(a - prev, -p["jerk"] * dt, p["jerk"] * dt))
        self.prev_accel = a
        cmd = np.clip(np.array([k / ACTION_SCALE[0], a / ACTION_SCALE[1]]), -1, 1).astype(np.float32)
        self.buffer.append(cmd)
        if len(self.buffer) <= p["delay_steps"]:
            return self.buffer[0]
        return self.buffer.popleft()
