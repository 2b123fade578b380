"""Each disengagement cause fires on a constructed case, and not on a clean drive."""

import numpy as np
import pytest

from drivegpt.data.schema import Cause
from drivegpt.sim.roadworld import HumanDriver, RoadWorldConfig, RoadWorldEnv, SafetyDriver

DT = 0.05
CLEAN = dict(lane_offset=0.1, heading_error=0.01, speed=25.0, accel=0.0, curvature=0.001,
             lead_gap=60.0, lead_speed=25.0, flow_speed=26.0)


def run(cases, n=None):
    """Feed a sequence of metric dicts (or one repeated n times); return (cause, reason) list."""
    sd = SafetyDriver(RoadWorldConfig().safety, DT)
    seq = cases if n is None else [cases] * n
    out = []
    for m in seq:
        out.append((sd.check({**CLEAN, **m}), sd.reason))
    return out


def first(out):
    return next(((i, c, r) for i, (c, r) in enumerate(out) if c != Cause.NONE), None)


def test_clean_drive_never_disengages():
    assert first(run({}, 400)) is None


@pytest.mark.parametrize("case,cause,reason", [
    (dict(lane_offset=-1.0), Cause.STEER, "lane_offset"),
    (dict(heading_error=0.2), Cause.STEER, "heading"),
    (dict(curvature=0.005), Cause.STEER, "lat_accel"),  # 25^2 * 0.005 = 3.1 m/s^2
    (dict(lead_gap=30.0, lead_speed=5.0), Cause.BRAKE, "ttc"),  # closing 20 m/s -> 1.5 s
    (dict(lead_gap=10.0, lead_speed=25.0), Cause.BRAKE, "gap"),  # 0.4 s time gap
])
def test_each_cause_fires(case, cause, reason):
    hit = first(run(case, 60))
    assert hit is not None and hit[1] == cause and hit[2] == reason
    assert hit[0] == round(1.0 / DT)  # right after the 1 s grace period


def test_jerk_fires_brake_but_smooth_braking_does_not():
    step = [{}] * 30 + [dict(accel=-3.0)] * 20  # accel jumps by 3 m/s^2 in one frame
    assert first(run(step))[1:] == (Cause.BRAKE, "jerk")
    ramp = [{}] * 30 + [dict(accel=-0.1 * i) for i in range(30)]  # 2 m/s^3
    assert first(run(ramp)) is None


def test_gas_fires_after_three_slow_seconds_only():
    hit = first(run(dict(speed=12.0), 200))  # < 0.6 * 26 m/s
    assert hit[1:] == (Cause.GAS, "slow") and hit[0] == round(3.0 / DT) - 1
    assert first(run(dict(speed=12.0, flow_speed=4.0), 200)) is None  # the flow is slow too
    assert first(run(dict(speed=16.0), 200)) is None  # above 60 %


def test_env_steering_off_the_lane_disengages_with_steer():
    env = RoadWorldEnv(height=32, width=64, seconds=20, traffic=False)
    env.reset(seed=0)
    for t in range(200):
        _, r, term, trunc, info = env.step(np.array([0.6, 0.0], np.float32))
        if term:
            break
    assert term and r == -1.0 and info["cause"] == Cause.STEER


@pytest.mark.parametrize("seed", [0, 1])
def test_human_driver_drives_cleanly(seed):
    env = RoadWorldEnv(height=32, width=64, seconds=15)
    env.reset(seed=seed)
    human = HumanDriver()
    for _ in range(300):
        _, r, term, trunc, info = env.step(human.act(env))
        assert not term, info
        if trunc:
            break
    assert abs(info["lane_offset"]) < 0.5
