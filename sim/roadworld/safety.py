"""Ground-truth safety driver: decides when the autopilot is disengaged, and why.

Rules (thresholds in ``SafetyConfig`` / ``configs/sim/default.yaml``), checked in priority
order BRAKE, STEER, GAS:

- BRAKE: time-to-collision with the lead under ``min_ttc``; or bumper gap under
  ``min_gap`` or under ``min_time_gap`` x speed; or |jerk| over ``max_jerk`` (comfort;
  jerk = accel change over ``jerk_window``).
- STEER: |offset from lane center| over ``max_lane_offset``; |heading error| over
  ``max_heading_error``; |lateral accel| = v^2 |curvature| over ``max_lat_accel`` (comfort).
- GAS: speed under ``slow_fraction`` x flow speed for ``slow_seconds`` (flow speed = the
  road's speed profile, capped by a lead car's speed when one is within 60 m).

No checks during the first ``grace_seconds`` after (re-)engagement.
"""

from __future__ import annotations

from collections import deque

from drivegpt.data.schema import Cause

from .config import SafetyConfig


class SafetyDriver:
    def __init__(self, cfg: SafetyConfig, dt: float):
        self.cfg, self.dt = cfg, dt
        self.window = max(1, round(cfg.jerk_window / dt))
        self.slow_steps = max(1, round(cfg.slow_seconds / dt))
        self.grace_steps = round(cfg.grace_seconds / dt)
        self.reset()

    def reset(self):
        """Call on (re-)engagement."""
        self.slow_count = 0  # consecutive slow frames
        self.count = 0  # frames checked since (re-)engagement
        self.accels: deque = deque(maxlen=self.window + 1)
        self.reason = ""

    def check(self, m: dict) -> Cause:
        """``m``: lane_offset, heading_error, speed, accel, curvature, lead_gap (bumper gap,
        inf if none), lead_speed, flow_speed. Returns the cause (Cause.NONE if fine);
        ``self.reason`` says which rule fired."""
        c = self.cfg
        self.accels.append(m["accel"])
        self.count += 1
        v = m["speed"]
        slow = v < c.slow_fraction * m["flow_speed"] and m["flow_speed"] > c.min_flow_speed
        self.slow_count = self.slow_count + 1 if slow else 0
        if self.count <= self.grace_steps:
            self.reason = ""
            return Cause.NONE
        gap, closing = m["lead_gap"], v - m["lead_speed"]
        jerk = (self.accels[-1] - self.accels[0]) / (self.dt * (len(self.accels) - 1)) \
            if len(self.accels) > 1 else 0.0
        lat = v * v * abs(m["curvature"])
        rules = [
            (Cause.BRAKE, "ttc", closing > 0 and gap / closing < c.min_ttc),
            (Cause.BRAKE, "gap", gap < c.min_gap or (v > 1.0 and gap < c.min_time_gap * v)),
            (Cause.BRAKE, "jerk", abs(jerk) > c.max_jerk),
            (Cause.STEER, "lane_offset", abs(m["lane_offset"]) > c.max_lane_offset),
            (Cause.STEER, "heading", abs(m["heading_error"]) > c.max_heading_error),
            (Cause.STEER, "lat_accel", lat > c.max_lat_accel),
            (Cause.GAS, "slow", self.slow_count >= self.slow_steps),
        ]
        for cause, reason, fired in rules:
            if fired:
                self.reason = reason
                return cause
        self.reason = ""
        return Cause.NONE
