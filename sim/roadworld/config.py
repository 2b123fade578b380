"""Road-world configuration: nested dataclasses mirrored by ``configs/sim/default.yaml``.

``RoadWorldConfig.from_dict(d)`` accepts a plain dict or an OmegaConf node (``cfg.sim``)
with any subset of the keys; an unknown key raises a ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CameraConfig:
    hfov_deg: float = 70.0  # horizontal field of view; fx = fy = width / 2 / tan(hfov / 2)
    mount_height: float = 1.22  # m above ground
    mount_x: float = 1.2  # m forward of the rear axle (the pose reference point)
    pitch_down_deg: float = 1.0  # camera tilted down by this angle
    near: float = 0.5  # m, near clipping plane
    far: float = 160.0  # m, draw distance for the road
    scenery_far: float = 110.0  # m, draw distance for scenery boxes


@dataclass
class RoadConfig:
    lanes: tuple = (2, 4)  # min, max lanes (inclusive)
    lane_width: float = 3.7  # m
    shoulder: float = 2.2  # m of paved shoulder beyond each edge line
    line_width: float = 0.15  # m
    dash_length: float = 3.0  # m
    dash_period: float = 12.0  # m (dash + gap)
    min_radius: float = 50.0  # m, tightest curve
    speed_limit: tuple = (22.0, 32.0)  # m/s, drawn per segment
    comfort_lat_accel: float = 1.8  # m/s^2, sets the flow speed in curves
    comfort_decel: float = 1.2  # m/s^2, flow slows this early before curves


@dataclass
class SceneryConfig:
    spacing: float = 14.0  # m, mean spacing of roadside objects on each side
    pole_spacing: float = 45.0  # m, utility poles on one side
    max_offset: float = 28.0  # m beyond the shoulder
    brightness: tuple = (0.55, 1.15)
    tint: float = 0.12  # max per-channel tint deviation
    fog_distance: tuple = (70.0, 700.0)  # m, e-folding distance of fog/haze (log-uniform)


@dataclass
class TrafficConfig:
    vehicles: int = 6  # other vehicles (traffic array is [T, vehicles, 4])
    lead_probability: float = 0.7  # a lead car in the ego lane at the start
    speed_factor: tuple = (0.8, 1.05)  # desired speed / flow speed
    idm_accel: float = 1.5
    idm_decel: float = 2.0
    idm_time_gap: float = 1.4
    idm_min_gap: float = 2.5
    slowdown_rate: float = 0.025  # 1/s per vehicle: random slow-downs (brake events)
    slowdown_factor: tuple = (0.3, 0.7)
    slowdown_seconds: tuple = (3.0, 8.0)


@dataclass
class SafetyConfig:
    """Ground-truth safety driver thresholds (README "Road world" documents them)."""

    max_lane_offset: float = 0.9  # m from lane center -> STEER
    max_heading_error: float = 0.15  # rad from lane direction -> STEER
    max_lat_accel: float = 2.5  # m/s^2 (comfort) -> STEER
    min_ttc: float = 2.0  # s time-to-collision with the lead -> BRAKE
    min_gap: float = 3.0  # m bumper gap -> BRAKE
    min_time_gap: float = 0.5  # s gap / speed -> BRAKE
    max_jerk: float = 5.0  # m/s^3 (comfort) -> BRAKE
    jerk_window: float = 0.25  # s, jerk = accel change over this window
    slow_fraction: float = 0.6  # below this fraction of flow speed ...
    slow_seconds: float = 3.0  # ... for this long -> GAS
    min_flow_speed: float = 5.0  # m/s, no GAS when the flow itself is slower
    grace_seconds: float = 1.0  # no checks this long after (re-)engagement


@dataclass
class BehaviourConfig:
    """Fleet driver behaviours (README "Road world", fleet drivers): episodes the autopilot
    drives while engaged, started at ``*_rate`` per minute of engaged driving times a
    per-segment propensity (one per kind, Gamma(``propensity_shape``) with mean 1). One
    lateral episode (weave, drift, lane change) and one longitudinal one (hard brake, late
    brake, tailgate, surge) at a time, drawn independently. ``enabled`` is read by
    ``drive_segment`` only: a bare ``Autopilot`` (the closed-loop baseline) never uses them."""

    enabled: bool = True
    propensity_shape: float = 1.5  # Gamma shape of the per-segment rate multipliers (mean 1)
    # lateral: pursuit on a target offset from the lane centre
    weave_rate: float = 3.0  # 1/min
    weave_amplitude: tuple = (0.3, 1.1)  # m, sinusoid of lateral offset
    weave_period: tuple = (2.5, 6.0)  # s
    weave_seconds: tuple = (8.0, 25.0)
    drift_rate: float = 1.5  # 1/min: the target offset creeps away, then snaps back
    drift_speed: tuple = (0.1, 0.4)  # m/s lateral
    drift_offset: tuple = (0.4, 1.5)  # m reached before the correction
    lane_change_rate: float = 1.0  # 1/min, to an adjacent lane with room (none on the other side)
    lane_change_seconds: tuple = (3.0, 6.0)
    lane_change_complete: float = 0.7  # P(the human completes a flagged lane change), else returns
    # longitudinal
    brake_rate: float = 1.5  # 1/min hard brakes
    brake_decel: tuple = (1.5, 4.0)  # m/s^2
    brake_seconds: tuple = (0.5, 2.5)
    brake_jerk: tuple = (4.0, 20.0)  # m/s^3 jerk limit of brakes and surges
    late_brake_rate: float = 1.0  # 1/min: ignore the lead until the time-to-collision is short
    late_brake_ttc: tuple = (1.5, 3.5)  # s, then brake hard (brake_decel, brake_jerk)
    late_brake_seconds: tuple = (8.0, 20.0)  # how long the driver stays inattentive
    tailgate_rate: float = 1.0  # 1/min
    tailgate_time_gap: tuple = (0.2, 0.6)  # s
    tailgate_seconds: tuple = (8.0, 25.0)
    surge_rate: float = 1.0  # 1/min sudden accelerations
    surge_accel: tuple = (1.0, 3.0)  # m/s^2
    surge_seconds: tuple = (1.0, 3.0)


@dataclass
class AutopilotConfig:
    quality: tuple = (2.2, 1.4)  # Beta(a, b) of per-segment quality (1 = good)
    curvature_noise: float = 0.0025  # 1/m AR(1) noise std at quality 0
    noise_time: float = 1.0  # s correlation time of the noise
    curvature_bias: float = 0.004  # 1/m bias std at quality 0
    accel_noise: float = 0.4  # m/s^2 white noise std at quality 0
    max_delay: float = 0.4  # s command delay at quality 0
    min_time_gap: float = 0.5  # s following time gap at quality 0 (1.6 at quality 1)
    slowdown_rate: float = 0.04  # 1/s phantom slow-downs at quality 0
    takeover_seconds: float = 3.0  # human drives this long after a disengagement
    behaviours: BehaviourConfig = field(default_factory=BehaviourConfig)


@dataclass
class RoadWorldConfig:
    fps: int = 20
    height: int = 128
    width: int = 256
    seconds: float = 60.0
    camera: CameraConfig = field(default_factory=CameraConfig)
    road: RoadConfig = field(default_factory=RoadConfig)
    scenery: SceneryConfig = field(default_factory=SceneryConfig)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    autopilot: AutopilotConfig = field(default_factory=AutopilotConfig)

    @property
    def dt(self) -> float:
        return 1.0 / self.fps

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any = None, **overrides) -> "RoadWorldConfig":
        if d is not None and not isinstance(d, dict):
            from omegaconf import OmegaConf

            d = OmegaConf.to_container(d, resolve=True)
        d = {**(d or {}), **overrides}
        return _build(cls, d, "sim")

    def replace(self, **overrides) -> "RoadWorldConfig":
        return RoadWorldConfig.from_dict(self.to_dict(), **overrides)


def _to_plain(x):
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _build(cls, d: dict, where: str):
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"config {where}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            raise ValueError(f"config {where}.{key}: unknown key (known: {', '.join(fields)})")
        default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING \
            else fields[key].default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), {**dataclasses.asdict(default), **(value or {})}
                                 if isinstance(value, dict) else value, f"{where}.{key}")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise ValueError(f"config {where}.{key}: expected {len(default)} numbers, got {value!r}")
            kwargs[key] = tuple(float(v) if isinstance(default[0], float) else int(v) for v in value)
        elif isinstance(default, bool):
            kwargs[key] = bool(value)
        elif isinstance(default, (int, float)):
            try:
                kwargs[key] = type(default)(value)
            except (TypeError, ValueError):
                raise ValueError(f"config {where}.{key}: expected a number, got {value!r}") from None
        else:
            kwargs[key] = value
    return cls(**kwargs)
