"""Closed-loop driving metrics from recorded trajectories (ground-truth road world).

A ``Trajectory`` holds per-step arrays at a fixed ``dt`` for the steps the controller under
test was driving (engaged), and the disengagements it caused (cause codes, ``data.schema``).
``closed_loop_metrics`` pools trajectories into one row of the evaluation table:

- ``km``, ``hours``: engaged distance (sum of speed x dt) and time;
- ``disengagements``, ``per_100km`` total and by cause (STEER, BRAKE, GAS);
- ``speed_ratio``: mean speed / mean flow speed over engaged time (1 = keeps up with traffic);
- ``lat_accel_p50/p95/p99`` |v^2 k| m/s^2, ``jerk_p50/p95/p99`` |da/dt| m/s^3 (jerk within
  continuous engaged stretches only);
- ``lane_error_mean`` / ``_p95`` / ``_rms``: |lateral offset from the lane centre| m;
- ``rule_<name>``: disengagements by the safety rule that fired (``lane_offset``, ``lat_accel``,
  ``slow``...; the road world's ``Safety.reason``), when the trajectories recorded it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drivegpt.data.schema import CAUSE_NAMES, Cause


@dataclass
class Trajectory:
    dt: float
    speed: list = field(default_factory=list)
    flow_speed: list = field(default_factory=list)
    lat_accel: list = field(default_factory=list)
    accel: list = field(default_factory=list)
    lane_offset: list = field(default_factory=list)
    stretch: list = field(default_factory=list)   # id of the continuous engaged stretch
    causes: list = field(default_factory=list)    # one cause code per disengagement
    reasons: list = field(default_factory=list)   # the rule that fired, per disengagement ("" unknown)

    def add(self, speed, flow_speed, lat_accel, accel, lane_offset, stretch: int = 0):
        self.speed.append(float(speed))
        self.flow_speed.append(float(flow_speed))
        self.lat_accel.append(float(lat_accel))
        self.accel.append(float(accel))
        self.lane_offset.append(float(lane_offset))
        self.stretch.append(int(stretch))

    def disengage(self, cause: int, reason: str = ""):
        if int(cause) == Cause.NONE:
            raise ValueError("Trajectory.disengage: cause must be a Cause code != NONE")
        self.causes.append(int(cause))
        self.reasons.append(str(reason or ""))


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else float("nan")


def jerk_of(accel: np.ndarray, stretch: np.ndarray, dt: float) -> np.ndarray:
    """|d accel / dt| between consecutive steps of the same engaged stretch."""
    if accel.size < 2:
        return np.zeros(0)
    same = stretch[1:] == stretch[:-1]
    return np.abs(np.diff(accel) / dt)[same]


def closed_loop_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    if not trajs:
        raise ValueError("closed_loop_metrics: no trajectories")
    dts = {t.dt for t in trajs}
    if len(dts) != 1:
        raise ValueError(f"closed_loop_metrics: trajectories have different dt {sorted(dts)}")
    dt = dts.pop()
    cat = {k: np.concatenate([np.asarray(getattr(t, k), np.float64) for t in trajs])
           for k in ("speed", "flow_speed", "lat_accel", "accel", "lane_offset")}
    jerk = np.concatenate([jerk_of(np.asarray(t.accel, np.float64), np.asarray(t.stretch), dt) for t in trajs])
    causes = np.array([c for t in trajs for c in t.causes], np.int64)
    km = float(cat["speed"].sum() * dt / 1000.0)
    out: dict[str, float] = {
        "episodes": float(len(trajs)),
        "km": km,
        "hours": float(cat["speed"].size * dt / 3600.0),
        "disengagements": float(causes.size),
        "per_100km": float(causes.size / km * 100.0) if km > 0 else float("nan"),
    }
    for code, name in zip((Cause.STEER, Cause.BRAKE, Cause.GAS), CAUSE_NAMES):
        n = int((causes == int(code)).sum())
        out[f"{name}"] = float(n)
        out[f"{name}_per_100km"] = float(n / km * 100.0) if km > 0 else float("nan")
    reasons = [r for t in trajs for r in t.reasons if r]
    for r in sorted(set(reasons)):
        out[f"rule_{r}"] = float(reasons.count(r))
    flow = cat["flow_speed"].mean() if cat["flow_speed"].size else float("nan")
    out["mean_speed"] = float(cat["speed"].mean()) if cat["speed"].size else float("nan")
    out["speed_ratio"] = float(cat["speed"].mean() / flow) if flow and flow > 0 else float("nan")
    la = np.abs(cat["lat_accel"])
    lo = np.abs(cat["lane_offset"])
    for q in (50, 95, 99):
        out[f"lat_accel_p{q}"] = _pct(la, q)
        out[f"jerk_p{q}"] = _pct(jerk, q)
    out["lane_error_mean"] = float(lo.mean()) if lo.size else float("nan")
    out["lane_error_p95"] = _pct(lo, 95)
    out["lane_error_rms"] = float(np.sqrt((lo**2).mean())) if lo.size else float("nan")
    return out


TABLE_COLUMNS = [
    ("km", "km", "{:.1f}"), ("per_100km", "dis/100km", "{:.1f}"), ("STEER_per_100km", "STEER", "{:.1f}"),
    ("BRAKE_per_100km", "BRAKE", "{:.1f}"), ("GAS_per_100km", "GAS", "{:.1f}"),
    ("speed_ratio", "speed/flow", "{:.2f}"), ("lat_accel_p95", "|lat acc| p95", "{:.2f}"),
    ("lat_accel_p99", "|lat acc| p99", "{:.2f}"), ("jerk_p95", "|jerk| p95", "{:.2f}"),
    ("jerk_p99", "|jerk| p99", "{:.2f}"), ("lane_error_mean", "lane err m", "{:.2f}"),
    ("lane_error_p95", "lane err p95", "{:.2f}"),
]


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """One markdown table: a row per controller, the columns above."""
    head = "| controller | " + " | ".join(c[1] for c in TABLE_COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = [head, sep]
    for name, m in rows.items():
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            v = m.get(key)
            cells.append("n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
