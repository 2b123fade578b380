import math

import numpy as np
import pytest
import torch

from drivegpt.sim import vehicle as V


def _drive(state, action, n, dt=0.05):
    pose = np.zeros(3)
    poses = [pose]
    for _ in range(n):
        state, rel = V.step(state, action, dt)
        pose = V.compose_pose2d(pose, rel)
        poses.append(pose)
    return state, np.stack(poses)


def test_constant_curvature_traces_closed_form_circle():
    k = 0.02  # radius 50 m
    state = np.array([15.0, k, 0.0])  # actuator already settled at k
    action = np.array([k / V.ACTION_SCALE[0], 0.0])
    n = 400  # 20 s -> 300 m of arc, most of a full circle (2 pi 50 = 314 m)
    state, poses = _drive(state, action, n)
    # circle of radius 1/k centred at (0, 1/k) for a start heading along +x, turning left
    r = np.hypot(poses[:, 0], poses[:, 1] - 1 / k)
    np.testing.assert_allclose(r, 1 / k, atol=1e-6)
    s = 15.0 * 0.05 * np.arange(n + 1)
    np.testing.assert_allclose(poses[:, 0], np.sin(k * s) / k, atol=1e-6)
    np.testing.assert_allclose(poses[:, 2], k * s, atol=1e-9)


def test_right_turn_has_negative_y_and_yaw():
    state = np.array([10.0, 0.0, 0.0])
    _, poses = _drive(state, np.array([-0.5, 0.0]), 40)
    assert poses[-1, 1] < -1 and poses[-1, 2] < -0.1


def test_actuator_lag_is_first_order():
    state = np.array([10.0, 0.0, 0.0])
    for _ in range(2):  # two time constants of the accel actuator (0.2 s = 4 steps at 20 Hz)
        state, _ = V.step(state, np.array([0.0, 0.5]), 0.2)  # dt = tau -> 1 - 1/e per step
    np.testing.assert_allclose(state[2], 2.0 * (1 - math.exp(-2)), rtol=1e-9)


def test_speed_never_negative_and_limits_clip():
    state = np.array([1.0, 0.0, 0.0])
    for _ in range(40):
        state, rel = V.step(state, np.array([5.0, -5.0]))
        assert state[0] >= 0 and rel[0] >= -1e-12
    assert abs(state[1]) <= V.ACTION_SCALE[0] + 1e-12


def test_inverse_recovers_action(rng):
    state = np.stack([rng.uniform(3, 30, 64), rng.uniform(-0.03, 0.03, 64), rng.uniform(-2, 2, 64)], -1)
    action = rng.uniform(-1, 1, (64, 2))
    new, rel = V.step(state, action)
    keep = new[:, 0] > 0  # a stopped car has no recoverable accel
    rec = V.inverse(rel, state[:, 0], new[:, 0], curvature=state[:, 1], accel=state[:, 2])
    np.testing.assert_allclose(rec[keep], action[keep], atol=1e-6)
    # without the actuator state the inverse gives the achieved (steady-state) command
    ach = V.inverse(rel, state[:, 0], new[:, 0])
    np.testing.assert_allclose(ach[keep] * V.ACTION_SCALE, new[keep, 1:], atol=1e-6)


def test_inverse_of_a_command_held_over_substeps(rng):
    """``substeps``: the held command whose lagged mean curvature is the achieved one; exact for a
    constant speed (accel 0), and ``held_lag`` is the lag's weight of the start state."""
    assert V.held_lag(0.2, 0.1, 1) == pytest.approx(math.exp(-2.0))
    assert V.held_lag(0.2, 0.1, 4) == pytest.approx(sum(math.exp(-0.5 * i) for i in range(1, 5)) / 4)
    with pytest.raises(ValueError, match="substeps"):
        V.held_lag(0.2, 0.1, 0)
    v = rng.uniform(5, 30, 32)
    state = np.stack([v, rng.uniform(-0.03, 0.03, 32), np.zeros(32)], -1)
    action = np.stack([rng.uniform(-0.9, 0.9, 32), np.zeros(32)], -1)
    s, yaw, dist = state, np.zeros(32), np.zeros(32)
    for _ in range(4):  # a 5 Hz decision held over four 20 Hz steps
        s, rel = V.step(s, action, dt=0.05)
        yaw, dist = yaw + rel[:, 5], dist + np.hypot(rel[:, 0], rel[:, 1])
    move = V.arc_pose(dist, yaw / dist)  # the interval's move as one arc: its mean curvature
    held = V.inverse(move, state[:, 0], s[:, 0], dt=0.2, curvature=state[:, 1], substeps=4)
    np.testing.assert_allclose(held[:, 0], action[:, 0], atol=2e-3)
    steady = V.inverse(move, state[:, 0], s[:, 0], dt=0.2)  # the achieved mean: a third still the start state
    assert np.abs(steady[:, 0] - action[:, 0]).mean() > 10 * np.abs(held[:, 0] - action[:, 0]).mean()


def test_inverse_sequence_recovers_logged_actions(rng):
    state = np.array([12.0, 0.0, 0.0])
    actions = np.clip(np.cumsum(rng.normal(0, 0.1, (50, 2)), 0), -0.9, 0.9)
    rels, speeds = [], [state[0]]
    for a in actions:
        state, rel = V.step(state, a)
        rels.append(rel)
        speeds.append(state[0])
    rels.append(np.zeros(6))
    rec = V.inverse_sequence(np.stack(rels), np.array(speeds))
    # step 0 ignores the (unknown) initial actuator state; every later step is exact
    np.testing.assert_allclose(rec[1:], actions[1:], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_numpy_and_torch_agree_batched(rng, dtype):
    state = np.stack([rng.uniform(0, 30, (4, 5)), rng.uniform(-0.05, 0.05, (4, 5)),
                      rng.uniform(-3, 3, (4, 5))], -1)
    action = rng.uniform(-1.2, 1.2, (4, 5, 2))
    new_np, rel_np = V.step(state, action)
    new_t, rel_t = V.step(torch.tensor(state, dtype=dtype), torch.tensor(action, dtype=dtype))
    assert isinstance(rel_t, torch.Tensor) and rel_t.dtype == dtype and rel_t.shape == (4, 5, 6)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(new_t.numpy(), new_np, atol=tol)
    np.testing.assert_allclose(rel_t.numpy(), rel_np, atol=tol)
    inv_np = V.inverse(rel_np, state[..., 0], new_np[..., 0], curvature=state[..., 1], accel=state[..., 2])
    inv_t = V.inverse(rel_t, torch.tensor(state[..., 0], dtype=dtype), new_t[..., 0],
                      curvature=torch.tensor(state[..., 1], dtype=dtype),
                      accel=torch.tensor(state[..., 2], dtype=dtype))
    np.testing.assert_allclose(inv_t.numpy(), inv_np, atol=10 * tol)
