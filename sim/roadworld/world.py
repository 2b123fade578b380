"""One road-world drive: road, scenery, look, traffic, the ego bicycle and the camera.

``World(cfg, seed)`` is deterministic in ``seed``: separate generators (spawned from one
``SeedSequence``) drive the road, scenery, look, traffic and the start state, so changing
e.g. the traffic does not move the road.
"""

from __future__ import annotations

import math

import numpy as np

from drivegpt.sim import vehicle as V

from .config import RoadWorldConfig
from .render import Camera, Renderer
from .road import Look, Road, Scenery
from .traffic import Traffic


class World:
    def __init__(self, cfg: RoadWorldConfig, seed: int, height: int | None = None,
                 width: int | None = None, traffic: bool = True):
        self.cfg, self.seed = cfg, int(seed)
        self.dt = cfg.dt
        self.params = V.VehicleParams()
        g_road, g_scen, g_look, g_traf, g_ego = (np.random.default_rng(s) for s in
                                                  np.random.SeedSequence(self.seed).spawn(5))
        length = min(cfg.seconds, 1800.0) * 42.0 + 400.0  # longer episodes end with the road
        self.road = Road(g_road, cfg.road, length)
        self.scenery = Scenery(g_scen, cfg.scenery, self.road)
        self.look = Look(g_look, cfg.scenery)
        self.camera = Camera(cfg.camera, height or cfg.height, width or cfg.width)
        self.renderer = Renderer(self.camera, self.road, self.scenery, self.look, cfg.road)
        self.lane = int(g_ego.integers(self.road.n_lanes))
        s0 = 40.0
        lat0 = float(self.road.lane_center(self.lane)) + float(g_ego.uniform(-0.2, 0.2))
        x, y = self.road.point(s0, lat0)
        _, _, h, k = self.road.at(s0)
        self.pose = np.array([float(x), float(y), float(h)])  # world (x, y, yaw), rear axle
        v0 = float(self.road.flow_at(s0) * g_ego.uniform(0.75, 0.95))
        self.state = np.array([v0, float(k), 0.0])  # (speed, curvature, accel)
        self.s = s0
        self.t = 0
        self.traffic = Traffic(g_traf, cfg.traffic, self.road, s0, self.lane) if traffic else None
        self.last_rel = np.zeros(6)
        self._metrics = None  # cache of metrics() for the current state

    # ---------------------------------------------------------------- dynamics
    def step(self, action) -> np.ndarray:
        """Apply a normalized action for one frame; returns the relative pose [6] of the move."""
        a = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.isfinite(a).all():
            raise ValueError(f"road world: action must be finite, got {a.tolist()}")
        ego_s, ego_v = self.s, float(self.state[0])
        self.state, rel = V.step(self.state, a, self.dt, self.params)
        self.pose = V.compose_pose2d(self.pose, rel)
        self.s, _, _, _ = self.road.project(self.pose[0], self.pose[1], self.s)
        if self.traffic is not None:
            self.traffic.step(self.dt, ego_s, self.ego_lane_now(), ego_v, self.params.length)
        self.t += 1
        self.last_rel = rel
        self._metrics = None
        return rel

    def set_pose(self, x: float, y: float, yaw: float, s_hint: float | None = None):
        """Teleport the ego (replay); ``s_hint`` narrows the road search (else global)."""
        self.pose = np.array([x, y, yaw], dtype=np.float64)
        if s_hint is None:
            d2 = (self.road.x - x) ** 2 + (self.road.y - y) ** 2
            s_hint = float(self.road.s[int(np.argmin(d2))])
        self.s, _, _, _ = self.road.project(x, y, s_hint)
        self._metrics = None

    @property
    def done_road(self) -> bool:
        return self.s > self.road.length - 250.0

    # ----------------------------------------------------------------- queries
    def ego_lane_now(self) -> int:
        _, lat, _, _ = self.road.project(self.pose[0], self.pose[1], self.s)
        return int(self.road.lane_of(lat))

    def metrics(self) -> dict:
        """Everything the safety driver and the controllers look at (SI units); cached
        until the next step (callers must not modify the returned dict)."""
        if self._metrics is None:
            self._metrics = self._compute_metrics()
        return self._metrics

    def _compute_metrics(self) -> dict:
        s, lat, rh, rk = self.road.project(self.pose[0], self.pose[1], self.s)
        center = float(self.road.lane_center(self.lane))
        heading_error = (self.pose[2] - rh + math.pi) % (2 * math.pi) - math.pi
        v, k, a = (float(x) for x in self.state)
        lead_gap, lead_v = math.inf, math.inf
        if self.traffic is not None:
            # vehicles overlapping the ego laterally (within a lane width of its position)
            tr = self.traffic
            near = np.abs(tr.offsets() - lat) < 0.5 * self.road.lane_width + 0.3
            ahead = near & (tr.s > s)
            if ahead.any():
                j = np.flatnonzero(ahead)[np.argmin(tr.s[ahead])]
                lead_gap = float(tr.s[j] - s - (tr.length[j] + self.params.length) / 2)
                lead_v = float(tr.v[j])
        flow = float(self.road.flow_at(s))
        if lead_gap < 60.0:
            flow = min(flow, lead_v)
        return dict(s=s, lateral=lat, lane_offset=lat - center, heading_error=heading_error,
                    road_curvature=rk, speed=v, curvature=k, accel=a, lat_accel=v * v * k,
                    lead_gap=lead_gap, lead_speed=lead_v, flow_speed=flow)

    def world_pose6(self) -> np.ndarray:
        """(x, y, z, roll, pitch, yaw) of the rear axle on the ground (flat world)."""
        return np.array([self.pose[0], self.pose[1], 0.0, 0.0, 0.0, self.pose[2]])

    def traffic_array(self) -> np.ndarray:
        if self.traffic is None:
            return np.zeros((self.cfg.traffic.vehicles, 4), np.float32)
        return self.traffic.array()

    def render(self, mask: bool = False, vehicles: np.ndarray | None = None):
        veh = self.traffic_array() if vehicles is None else vehicles
        return self.renderer.render(self.pose, self.s, veh, mask=mask)
