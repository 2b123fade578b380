"""Other vehicles: IDM car-following in lanes, with random slow-downs (brake events).

State per vehicle in road coordinates. ``array()`` gives the logged form, float32 [n, 4] =
(s arc length m, lateral offset m (left-positive), speed m/s, length m); the ego is not
in it. Vehicles that fall far behind or run far ahead are respawned at the other end
(deterministically from the traffic's own generator).
"""

from __future__ import annotations

import numpy as np

from .config import TrafficConfig
from .road import Road

BEHIND, AHEAD = 70.0, 220.0  # m window around the ego in which vehicles live


class Traffic:
    def __init__(self, rng: np.random.Generator, cfg: TrafficConfig, road: Road, ego_s: float,
                 ego_lane: int):
        self.rng, self.cfg, self.road = rng, cfg, road
        n = cfg.vehicles
        self.s = np.zeros(n)
        self.lane = np.zeros(n, int)
        self.jitter = rng.uniform(-0.25, 0.25, n)
        self.v = np.zeros(n)
        self.factor = np.zeros(n)  # desired speed / flow speed
        self.length = rng.uniform(4.0, 5.5, n)
        self.slow_until = np.zeros(n)
        self.slow_factor = np.ones(n)
        self.t = 0.0
        for i in range(n):
            if i == 0 and rng.random() < cfg.lead_probability:
                self._place(i, ego_s + float(rng.uniform(25, 70)), ego_lane)
            else:
                self._spawn(i, ego_s, rng.uniform(-BEHIND * 0.6, AHEAD * 0.8))

    @property
    def n(self) -> int:
        return len(self.s)

    def _place(self, i, s, lane):
        self.s[i], self.lane[i] = s, lane
        self.factor[i] = self.rng.uniform(*self.cfg.speed_factor)
        self.v[i] = self.factor[i] * self.road.flow_at(s)
        self.slow_until[i], self.slow_factor[i] = 0.0, 1.0

    def _spawn(self, i, ego_s, rel):
        """Put vehicle i at ego_s + rel in a random lane with room around it (else park it
        far ahead, where it is invisible, and try again on a later step)."""
        lane = int(self.rng.integers(self.road.n_lanes))
        s = float(np.clip(ego_s + rel, 5.0, self.road.length - 10.0))
        others = (self.lane == lane) & (np.arange(self.n) != i)
        if np.any(np.abs(self.s[others] - s) < 25.0) or abs(s - ego_s) < 15.0:
            s = ego_s + AHEAD + 50.0 + 10.0 * i
        self._place(i, s, lane)

    def offsets(self) -> np.ndarray:
        return self.road.lane_center(self.lane) + self.jitter

    def array(self) -> np.ndarray:
        return np.stack([self.s, self.offsets(), self.v, self.length], -1).astype(np.float32)

    def set_array(self, arr: np.ndarray):
        """Overwrite the state from a logged ``array()`` row (non-reactive replay)."""
        arr = np.asarray(arr, np.float64)
        self.s, self.v, self.length = arr[:, 0].copy(), arr[:, 2].copy(), arr[:, 3].copy()
        self.lane = self.road.lane_of(arr[:, 1])
        self.jitter = arr[:, 1] - self.road.lane_center(self.lane)

    def leader_gaps(self, s_query, lane_query, exclude=None):
        """Bumper gap and speed of the nearest vehicle ahead of each query (inf if none)."""
        s_query = np.atleast_1d(s_query)
        same = self.lane[None, :] == np.atleast_1d(lane_query)[:, None]
        ahead = self.s[None, :] > s_query[:, None]
        ok = same & ahead
        if exclude is not None:
            ok[np.arange(len(s_query)), exclude] = False
        gap = np.where(ok, self.s[None, :] - s_query[:, None], np.inf)
        j = np.argmin(gap, 1)
        g = gap[np.arange(len(s_query)), j]
        return g, np.where(np.isfinite(g), self.v[j], np.inf), np.where(np.isfinite(g), j, -1)

    def step(self, dt: float, ego_s: float, ego_lane: int, ego_speed: float, ego_length: float = 4.6):
        """One IDM step; the ego (in ``ego_lane`` at ``ego_s``) is a leader for cars behind it."""
        c = self.cfg
        self.t += dt
        n = self.n
        # random slow-downs
        start = self.rng.random(n) < c.slowdown_rate * dt
        idle = self.t >= self.slow_until
        new = start & idle
        if new.any():
            k = int(new.sum())
            self.slow_until[new] = self.t + self.rng.uniform(*c.slowdown_seconds, k)
            self.slow_factor[new] = self.rng.uniform(*c.slowdown_factor, k)
        self.slow_factor[self.t >= self.slow_until] = 1.0
        v0 = np.maximum(self.factor * self.slow_factor * self.road.flow_at(self.s), 1.0)
        # leaders: other vehicles and the ego (centre-to-centre distances -> bumper gaps)
        centre_gap, lead_v, j = self.leader_gaps(self.s, self.lane, exclude=np.arange(n))
        lead_len = np.where(j >= 0, self.length[np.maximum(j, 0)], 0.0)
        gap = centre_gap - (self.length + lead_len) / 2
        ego_gap = ego_s - self.s - (self.length + ego_length) / 2
        use_ego = (self.lane == ego_lane) & (self.s < ego_s) & (ego_gap < gap)
        gap = np.where(use_ego, ego_gap, gap)
        lead_v = np.where(use_ego, ego_speed, lead_v)
        s_star = c.idm_min_gap + self.v * c.idm_time_gap + \
            self.v * (self.v - np.where(np.isfinite(lead_v), lead_v, self.v)) / (2 * np.sqrt(c.idm_accel * c.idm_decel))
        inter = np.where(np.isfinite(gap), (np.maximum(s_star, 0) / np.maximum(gap, 0.1)) ** 2, 0.0)
        acc = c.idm_accel * (1 - (self.v / v0) ** 4 - inter)
        acc = np.clip(acc, -6.0, c.idm_accel)
        v_new = np.maximum(self.v + acc * dt, 0.0)
        self.s = self.s + 0.5 * (self.v + v_new) * dt
        self.v = v_new
        for i in range(n):
            rel = self.s[i] - ego_s
            if rel < -BEHIND:
                self._spawn(i, ego_s, float(self.rng.uniform(AHEAD * 0.7, AHEAD)))
            elif rel > AHEAD + 100 and self.t > 0:
                self._spawn(i, ego_s, float(self.rng.uniform(-BEHIND, -BEHIND * 0.6)))
