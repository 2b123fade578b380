import numpy as np
import pytest

from drivegpt.data.schema import Cause
from drivegpt.rl.metrics import Trajectory, closed_loop_metrics, markdown_table


def _constant(n, speed, flow, k=0.0, offset=0.0, dt=0.05):
    t = Trajectory(dt=dt)
    for i in range(n):
        t.add(speed=speed, flow_speed=flow, lat_accel=speed**2 * k, accel=0.0, lane_offset=offset)
    return t


def test_distance_rates_and_causes():
    # 2 trajectories at 20 m/s for 1000 s each at 20 Hz -> 40 km
    a = _constant(20000, 20.0, 25.0)
    a.disengage(Cause.STEER)
    a.disengage(Cause.BRAKE)
    b = _constant(20000, 20.0, 25.0)
    b.disengage(Cause.STEER)
    m = closed_loop_metrics([a, b])
    assert m["km"] == pytest.approx(40.0)
    assert m["hours"] == pytest.approx(2000 / 3600)
    assert m["per_100km"] == pytest.approx(3 / 40 * 100)
    assert m["STEER_per_100km"] == pytest.approx(5.0) and m["BRAKE_per_100km"] == pytest.approx(2.5)
    assert m["GAS"] == 0
    assert m["speed_ratio"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="cause"):
        a.disengage(0)


def test_lateral_accel_jerk_and_lane_error_on_constructed_trajectory():
    dt = 0.1
    t = Trajectory(dt=dt)
    # circle of radius 100 m at 10 m/s -> lat accel 1 m/s^2; accel ramps 0.5 m/s^2 per step
    # -> jerk 5 m/s^3 inside the stretch; lane offsets alternate +-0.3 m
    for i in range(100):
        t.add(speed=10.0, flow_speed=10.0, lat_accel=10.0**2 / 100.0, accel=0.5 * (i % 50),
              lane_offset=0.3 * (-1) ** i, stretch=i // 50)
    m = closed_loop_metrics([t])
    assert m["lat_accel_p50"] == pytest.approx(1.0) and m["lat_accel_p99"] == pytest.approx(1.0)
    # the drop from 24.5 back to 0 happens across the stretch boundary: not a jerk
    assert m["jerk_p99"] == pytest.approx(5.0)
    assert m["lane_error_mean"] == pytest.approx(0.3) and m["lane_error_rms"] == pytest.approx(0.3)
    assert m["speed_ratio"] == pytest.approx(1.0)
    assert m["per_100km"] == 0.0


def test_table_lists_every_controller():
    rows = {"rl": closed_loop_metrics([_constant(100, 20, 20)]),
            "bc": closed_loop_metrics([_constant(100, 10, 20)])}
    md = markdown_table(rows)
    assert md.count("\n") == 4 and "| rl |" in md and "0.50" in md
    with pytest.raises(ValueError):
        closed_loop_metrics([_constant(5, 1, 1, dt=0.05), _constant(5, 1, 1, dt=0.1)])


def test_drive_rejects_policy_of_another_frame_size():
    from drivegpt.config import compose
    from drivegpt.rl.evaluate import drive
    from drivegpt.rl.policy import Policy

    cfg = compose("eval_policy", ["experiment=tiny"])  # road world renders 32x64
    p = Policy(dict(context_frames=2, frame_height=64, frame_width=128, channels=[8], pool_grid=[1, 2],
                    frame_features=8, bottleneck_dim=8, hidden=8))
    with pytest.raises(ValueError, match="64x128"):
        drive("p", [1000000], 1.0, cfg.sim, p, stride=2)


def test_drive_records_the_first_scenario_for_the_video():
    from drivegpt.config import compose
    from drivegpt.rl.evaluate import drive
    from drivegpt.rl.policy import Policy

    cfg = compose("eval_policy", ["experiment=tiny"])  # 32x64 at 20 Hz
    p = Policy(dict(context_frames=2, frame_height=32, frame_width=64, channels=[8], pool_grid=[1, 2],
                    frame_features=8, bottleneck_dim=8, hidden=8))
    frames = []
    trajs = drive("p", [1000000, 1000001], 1.0, cfg.sim, p, stride=2, frames_out=frames)
    assert len(trajs) == 2 and len(frames) == 10  # 20 steps at stride 2, first scenario only
    assert frames[0][0].shape == (32, 64, 3) and frames[0][0].dtype == np.uint8
    assert frames[0][1].startswith("p engaged")
    assert not np.array_equal(frames[0][0], frames[-1][0])  # the car moved


def test_drive_records_the_rule_behind_each_disengagement():
    """Each disengagement carries the safety rule that fired; the counts add up to the total and a
    rule made strict on purpose (a 5 cm lane-offset limit) shows up under its own name."""
    from drivegpt.rl.evaluate import drive

    cfg = {"height": 32, "width": 64, "safety": {"max_lane_offset": 0.05}}
    m = closed_loop_metrics(drive("autopilot", [1_000_000, 1_000_001], 20.0, cfg))
    rules = {k: v for k, v in m.items() if k.startswith("rule_")}
    assert m["disengagements"] > 0 and sum(rules.values()) == m["disengagements"]
    assert rules.get("rule_lane_offset", 0) >= 0.5 * m["disengagements"], rules
    t = Trajectory(dt=0.05)
    t.add(10, 10, 0, 0, 0)
    t.disengage(1, "heading")
    t.disengage(1)
    m = closed_loop_metrics([t])
    assert m["rule_heading"] == 1.0 and m["disengagements"] == 2.0


def test_drive_on_worker_processes_gives_each_scenario_the_trajectory_one_process_gives_it():
    """rl.eval.workers: scenarios split over spawned processes come back in seed order with the
    same trajectories and takeovers as one process drives them (a policy with a strict lane rule,
    so takeovers happen and the human's re-engagements are in it too)."""
    import torch

    from drivegpt.config import compose
    from drivegpt.rl.evaluate import drive
    from drivegpt.rl.policy import Policy

    cfg = compose("eval_policy", ["experiment=tiny", "sim.safety.max_lane_offset=0.3"])  # 32x64 at 20 Hz
    torch.manual_seed(0)
    p = Policy(dict(context_frames=2, frame_height=32, frame_width=64, channels=[8], pool_grid=[1, 2],
                    frame_features=8, bottleneck_dim=8, hidden=8))
    seeds = [1_000_000, 1_000_001, 1_000_002]
    frames1, frames2 = [], []
    one = drive("p", seeds, 6.0, cfg.sim, p, stride=2, frames_out=frames1)
    two = drive("p", seeds, 6.0, cfg.sim, p, stride=2, frames_out=frames2, workers=2)
    assert len(two) == 3 and sum(len(t.causes) for t in one) > 0
    for a, b in zip(one, two):
        assert a.causes == b.causes and a.stretch == b.stretch
        np.testing.assert_allclose(a.speed, b.speed, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.lane_offset, b.lane_offset, rtol=0, atol=1e-6)
    assert len(frames2) == len(frames1) and np.array_equal(frames1[-1][0], frames2[-1][0])
    assert [len(t.speed) for t in one] != [len(one[0].speed)] * 3 or one[0].speed != one[1].speed  # distinct roads
    with pytest.raises(ValueError, match="workers"):
        drive("p", seeds, 1.0, cfg.sim, p, workers=0)
