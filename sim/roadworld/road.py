"""The road: a clothoid centerline (curvature piecewise linear in arc length), lanes,
markings, the flow-speed profile, roadside scenery boxes and per-segment lighting.

Everything is precomputed once per segment on a 1 m arc-length grid; per-frame queries
interpolate it. The world is flat (z = 0).
"""

from __future__ import annotations

import math

import numpy as np

from .config import RoadConfig, SceneryConfig

DS = 1.0  # m, arc-length resolution of the precomputed centerline


class Road:
    """Centerline ``x, y, heading, curvature`` sampled every ``DS`` metres from s = 0."""

    def __init__(self, rng: np.random.Generator, cfg: RoadConfig, length: float, nodes=None):
        """``nodes``: optional (s, curvature) arrays replacing the random profile (tests)."""
        self.cfg = cfg
        self.n_lanes = int(rng.integers(cfg.lanes[0], cfg.lanes[1] + 1))
        self.lane_width = cfg.lane_width
        self.half_width = self.n_lanes * cfg.lane_width / 2
        self.speed_limit = float(rng.uniform(*cfg.speed_limit))
        self.left_yellow = bool(rng.random() < 0.5)
        n = int(math.ceil(length / DS)) + 2
        self.s = np.arange(n) * DS
        node_s, node_k = _curvature_nodes(rng, cfg, self.s[-1]) if nodes is None else nodes
        self.k = np.interp(self.s, node_s, node_k)
        # heading: exact integral of a piecewise-linear curvature (trapezoid is exact)
        self.heading = np.concatenate([[0.0], np.cumsum(0.5 * (self.k[1:] + self.k[:-1]) * DS)])
        mid = np.concatenate([[0.0], 0.5 * (self.heading[1:] + self.heading[:-1])])
        self.x = np.cumsum(np.cos(mid) * np.r_[0.0, np.full(n - 1, DS)])
        self.y = np.cumsum(np.sin(mid) * np.r_[0.0, np.full(n - 1, DS)])
        self.flow = self._flow_profile()
        self.sin, self.cos = np.sin(self.heading), np.cos(self.heading)

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def lane_center(self, lane) -> np.ndarray | float:
        """Lateral offset (left-positive) of lane ``lane`` (0 = rightmost) from the centerline."""
        return (np.asarray(lane) - (self.n_lanes - 1) / 2) * self.lane_width

    def lane_of(self, offset) -> np.ndarray:
        return np.clip(np.round(np.asarray(offset) / self.lane_width + (self.n_lanes - 1) / 2),
                       0, self.n_lanes - 1).astype(int)

    def _flow_profile(self) -> np.ndarray:
        """Speed the traffic flows at: the limit, slowed for curves and braking before them."""
        c = self.cfg
        v = np.minimum(self.speed_limit, np.sqrt(c.comfort_lat_accel / np.maximum(np.abs(self.k), 1e-9)))
        # backward pass: v[i] <= sqrt(v[i+1]^2 + 2 b ds) (decelerate in time for curves)
        v2 = v**2
        for i in range(len(v) - 2, -1, -1):
            lim = v2[i + 1] + 2 * c.comfort_decel * DS
            if v2[i] > lim:
                v2[i] = lim
        return np.sqrt(v2)

    def at(self, s):
        """Interpolated (x, y, heading, curvature) at arc lengths ``s`` (any shape)."""
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.s[-1] - 1e-6)
        i = (s / DS).astype(np.int64)
        f = s / DS - i
        x = self.x[i] + f * (self.x[i + 1] - self.x[i])
        y = self.y[i] + f * (self.y[i + 1] - self.y[i])
        h = self.heading[i] + f * (self.heading[i + 1] - self.heading[i])
        k = self.k[i] + f * (self.k[i + 1] - self.k[i])
        return x, y, h, k

    def at_sc(self, s):
        """(x, y, sin(heading), cos(heading)) at arc lengths ``s`` (renderer fast path)."""
        s = np.clip(s, 0.0, self.s[-1] - 1e-6)
        i = (s * (1.0 / DS)).astype(np.int64)
        f = s * (1.0 / DS) - i
        j = i + 1
        return (self.x[i] + f * (self.x[j] - self.x[i]), self.y[i] + f * (self.y[j] - self.y[i]),
                self.sin[i] + f * (self.sin[j] - self.sin[i]), self.cos[i] + f * (self.cos[j] - self.cos[i]))

    def flow_at(self, s):
        return np.interp(s, self.s, self.flow)

    def point(self, s, offset):
        """World (x, y) of the point at arc length ``s`` and lateral ``offset`` (broadcast)."""
        x, y, h, _ = self.at(s)
        offset = np.asarray(offset)
        return x - np.sin(h) * offset, y + np.cos(h) * offset

    def project(self, x: float, y: float, s_hint: float, window: float = 60.0):
        """(s, lateral offset, road heading, road curvature) of world point (x, y), searching
        arc lengths within ``window`` m of ``s_hint``."""
        i0 = max(int((s_hint - window) / DS), 0)
        i1 = min(int((s_hint + window) / DS) + 1, len(self.s) - 1)
        d2 = (self.x[i0:i1] - x) ** 2 + (self.y[i0:i1] - y) ** 2
        i = i0 + int(np.argmin(d2))
        h = self.heading[i]
        dx, dy = x - self.x[i], y - self.y[i]
        s = self.s[i] + math.cos(h) * dx + math.sin(h) * dy
        s = min(max(s, 0.0), self.s[-1] - 1e-6)
        rx, ry, rh, rk = self.at(s)
        lat = -math.sin(rh) * (x - rx) + math.cos(rh) * (y - ry)
        return s, float(lat), float(rh), float(rk)


def _curvature_nodes(rng, cfg: RoadConfig, length: float):
    """(s, curvature) nodes: straights, single curves and S-bends joined by clothoids."""
    kmax = 1.0 / cfg.min_radius
    s, k = [0.0, 80.0], [0.0, 0.0]  # start on a straight

    def add(ds, knew):
        s.append(s[-1] + ds)
        k.append(knew)

    while s[-1] < length:
        kind = rng.choice(3, p=[0.35, 0.45, 0.2])
        # curve sharpness: mostly gentle, sometimes down to the minimum radius
        mag = lambda: kmax * float(rng.uniform(0.08, 1.0)) ** 1.5  # noqa: E731
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if kind == 0:  # straight
            add(float(rng.uniform(20, 40)), 0.0)
            add(float(rng.uniform(40, 250)), 0.0)
        elif kind == 1:  # curve: clothoid in, arc, clothoid out
            kk = sign * mag()
            add(float(rng.uniform(25, 70)), kk)
            add(float(rng.uniform(20, 160)), kk)
            add(float(rng.uniform(25, 70)), 0.0)
        else:  # S-bend: one way, then the other
            k1, k2 = sign * mag(), -sign * mag()
            add(float(rng.uniform(25, 60)), k1)
            add(float(rng.uniform(10, 80)), k1)
            add(float(rng.uniform(40, 90)), k2)
            add(float(rng.uniform(10, 80)), k2)
            add(float(rng.uniform(25, 60)), 0.0)
    return np.asarray(s), np.asarray(k)


class Scenery:
    """Static roadside boxes (trees = trunk + crown, poles, buildings) with world corners
    precomputed: ``corners`` [N, 8, 3] (bottom 4 then top 4; corners 0,1,4,5 are the face
    nearest the start of the road), sorted by ``s``; ``front`` / ``side`` RGB colors."""

    def __init__(self, rng: np.random.Generator, cfg: SceneryConfig, road: Road):
        boxes = []  # (s, lateral, half_len, half_wid, z0, z1, rgb)
        edge = road.half_width + road.cfg.shoulder
        for side in (-1.0, 1.0):
            s = float(rng.uniform(0, cfg.spacing))
            while s < road.length - 5:
                off = edge + float(rng.uniform(1.0, cfg.max_offset))
                kind = rng.choice(3, p=[0.6, 0.15, 0.25])
                if kind == 0:  # tree
                    h = float(rng.uniform(4, 12))
                    r = float(rng.uniform(1.2, 3.0))
                    green = np.array([40, 95, 35]) * rng.uniform(0.6, 1.3)
                    boxes.append((s, side * off, 0.2, 0.2, 0.0, h * 0.45, (95, 70, 45)))
                    boxes.append((s, side * off, r, r, h * 0.35, h, tuple(green)))
                elif kind == 1:  # bush
                    r = float(rng.uniform(0.6, 1.5))
                    boxes.append((s, side * (edge + float(rng.uniform(0.8, 6))), r, r, 0.0, r * 1.2,
                                  tuple(np.array([60, 110, 45]) * rng.uniform(0.6, 1.2))))
                else:  # building
                    hl, hw = float(rng.uniform(4, 12)), float(rng.uniform(4, 10))
                    wall = rng.choice([(180, 170, 150), (150, 90, 70), (200, 200, 205), (120, 120, 130)])
                    boxes.append((s, side * (off + 6 + hw), hl, hw, 0.0, float(rng.uniform(4, 18)),
                                  tuple(np.array(wall) * rng.uniform(0.8, 1.1))))
                s += float(rng.exponential(cfg.spacing)) + 2.0
        side = 1.0 if rng.random() < 0.5 else -1.0
        for s in np.arange(float(rng.uniform(0, cfg.pole_spacing)), road.length - 5, cfg.pole_spacing):
            boxes.append((float(s), side * (edge + 0.8), 0.12, 0.12, 0.0, 8.0, (110, 100, 90)))
        boxes.sort(key=lambda b: b[0])
        b = np.array([bx[:6] for bx in boxes], dtype=np.float64).reshape(-1, 6)
        self.s = b[:, 0]
        self.rgb = np.clip(np.array([bx[6] for bx in boxes], dtype=np.float64).reshape(-1, 3), 0, 255)
        self.corners = box_corners(road, b[:, 0], b[:, 1], b[:, 2], b[:, 3], b[:, 4], b[:, 5])


def box_corners(road: Road, s, lat, half_len, half_wid, z0, z1) -> np.ndarray:
    """World corners [N, 8, 3] of road-aligned boxes (order: near-left, near-right,
    far-left, far-right at the bottom, then the same at the top)."""
    x, y, h, _ = road.at(s)
    c, sn = np.cos(h), np.sin(h)
    dl = np.array([-1, -1, 1, 1])[None] * half_len[:, None]  # [N, 4] along the road
    dw = np.array([1, -1, 1, -1])[None] * half_wid[:, None]  # [N, 4] left-positive
    lx = lat[:, None] + dw
    px = x[:, None] + c[:, None] * dl - sn[:, None] * lx
    py = y[:, None] + sn[:, None] * dl + c[:, None] * lx
    out = np.empty((len(s), 8, 3))
    out[:, :4, 0], out[:, 4:, 0] = px, px
    out[:, :4, 1], out[:, 4:, 1] = py, py
    out[:, :4, 2] = z0[:, None]
    out[:, 4:, 2] = z1[:, None]
    return out


class Look:
    """Per-segment lighting and weather: brightness, tint, fog, sky, ground and paint colors."""

    def __init__(self, rng: np.random.Generator, cfg: SceneryConfig):
        self.brightness = float(rng.uniform(*cfg.brightness))
        self.tint = 1.0 + rng.uniform(-cfg.tint, cfg.tint, 3)
        lo, hi = np.log(cfg.fog_distance)
        self.fog_distance = float(np.exp(rng.uniform(lo, hi)))
        overcast = rng.random() < 0.4
        sky_top = np.array([150, 160, 170]) if overcast else np.array([70, 120, 200])
        self.fog_rgb = self.color(np.array([190, 195, 200]) if overcast else np.array([175, 195, 215]))
        self.sky_top = self.color(sky_top * rng.uniform(0.85, 1.1))
        grass = np.array([70, 110, 50]) if rng.random() < 0.7 else np.array([140, 125, 80])
        self.grass = self.color(grass * rng.uniform(0.8, 1.2))
        self.hills = self.color(np.array([80, 105, 90]) * rng.uniform(0.8, 1.2))
        self.asphalt = self.color(np.full(3, rng.uniform(70, 110)))
        self.shoulder = self.color(self.asphalt / max(self.brightness, 1e-3) / self.tint * 1.18)
        self.white = self.color(np.array([235, 235, 230]))
        self.yellow = self.color(np.array([230, 190, 40]))
        # distant hills: elevation angle (rad) vs azimuth, 0.25 deg resolution over 360 deg
        az = np.linspace(0, 2 * np.pi, 1441)
        elev = np.zeros_like(az)
        for f in (1, 2, 3, 5, 8, 13):
            elev += rng.uniform(0, 0.012 / f**0.5) * np.sin(f * az + rng.uniform(0, 2 * np.pi))
        self.hill_elev = np.maximum(elev + rng.uniform(0.0, 0.02), 0.002)

    def color(self, rgb) -> np.ndarray:
        return np.clip(np.asarray(rgb, dtype=np.float64) * self.brightness * self.tint, 0, 255)

    def fog(self, rgb, dist):
        """Blend ``rgb`` toward the fog color by distance (scalar or array of distances)."""
        a = 1.0 - np.exp(-np.asarray(dist) / self.fog_distance)
        return rgb * (1 - a)[..., None] + self.fog_rgb * a[..., None] if np.ndim(a) else \
            rgb * (1 - a) + self.fog_rgb * a
