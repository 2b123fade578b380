"""Kinematic bicycle vehicle model shared by the road world, the learned sim and BC.

Every function accepts numpy arrays OR torch tensors with any leading (batch) dims and
uses torch ops (on the tensors' device) when given tensors.

Action (what a policy outputs): a normalized Box(2) in [-1, 1]:

    a[..., 0] * ACTION_SCALE[0] = desired curvature  [1/m]   (positive = turn left)
    a[..., 1] * ACTION_SCALE[1] = desired accel      [m/s^2] (positive = speed up)

``ACTION_SCALE = (0.05 1/m, 4.0 m/s^2)``: |curvature| <= 0.05 is a 20 m radius (tighter
than any road-world curve, ~50 m), |accel| <= 4 m/s^2 is a firm brake.

State ``[..., 3]`` = (speed m/s, curvature 1/m, accel m/s^2): the *actual* actuator
outputs. One step of length ``dt``:

1. actuators follow the desired values through a first-order lag, discretized exactly:
   ``k' = k + (1 - exp(-dt/tau_k)) (k_des - k)`` (same for accel with ``tau_a``);
2. ``v' = max(v + a' dt, 0)``; the car moves an arc of length ``ds = (v + v') dt / 2`` at
   constant curvature ``k'``.

The relative pose of the move is expressed in the ego frame at the start of the step
(x forward, y left, z up, yaw left-positive; ``data.schema`` conventions):
``(sin(k ds)/k, (1 - cos(k ds))/k, 0, 0, 0, k ds)``. The road world is flat, so z, roll
and pitch are zero.

``inverse`` maps a relative pose back to the normalized action that reproduces it: it
recovers the achieved curvature from the arc geometry and the achieved accel from the
speeds, then undoes the actuator lag given the previous actuator state (when known; for
logs use ``inverse_sequence`` which chains it along time).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

ACTION_SCALE = (0.05, 4.0)  # (curvature 1/m, accel m/s^2) at |normalized action| = 1
STATE_DIM = 3  # (speed, curvature, accel)


@dataclass(frozen=True)
class VehicleParams:
    wheelbase: float = 2.7  # m (rear axle to front axle); the pose reference is the rear axle
    length: float = 4.6  # m
    width: float = 1.85  # m
    max_curvature: float = ACTION_SCALE[0]  # 1/m, desired curvature is clipped to +-this
    max_accel: float = ACTION_SCALE[1]  # m/s^2
    max_decel: float = ACTION_SCALE[1]  # m/s^2 (positive number)
    tau_curvature: float = 0.1  # s, steering actuator lag time constant
    tau_accel: float = 0.2  # s, longitudinal actuator lag time constant
    max_speed: float = 45.0  # m/s

    def to_dict(self) -> dict:
        return asdict(self)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _xp(x):
    if _is_torch(x):
        import torch

        return torch
    return np


def _asarray(x, like):
    """``x`` as an array of ``like``'s kind, dtype (float) and device."""
    if _is_torch(like):
        import torch

        dtype = like.dtype if like.is_floating_point() else torch.float32
        return torch.as_tensor(x, dtype=dtype, device=like.device)
    dtype = like.dtype if np.issubdtype(np.asarray(like).dtype, np.floating) else np.float64
    return np.asarray(x, dtype=dtype)


def _stack(xs, like):
    if _is_torch(like):
        import torch

        return torch.stack(xs, dim=-1)
    return np.stack(xs, axis=-1)


def _clip(x, lo, hi):
    if _is_torch(x):
        return x.clamp(lo, hi)
    return np.clip(x, lo, hi)


def _sinc(xp, theta):
    """Unnormalized sinc sin(t)/t (both libraries' sinc is the normalized one)."""
    return xp.sinc(theta / math.pi)


def denormalize_action(a):
    """Normalized action [..., 2] -> (desired curvature 1/m, desired accel m/s^2) [..., 2]."""
    scale = _asarray(ACTION_SCALE, a)
    return a * scale


def normalize_action(u):
    """(curvature 1/m, accel m/s^2) [..., 2] -> normalized action [..., 2] (not clipped)."""
    scale = _asarray(ACTION_SCALE, u)
    return u / scale


def initial_state(speed, like=None):
    """State [..., 3] for cars cruising straight at ``speed`` (curvature 0, accel 0)."""
    like = speed if like is None else like
    v = _asarray(speed, like)
    xp = _xp(v)
    z = xp.zeros_like(v)
    return _stack([v, z, z], v)


def arc_pose(ds, curvature):
    """Relative pose [..., 6] of driving an arc of length ``ds`` at constant ``curvature``."""
    xp = _xp(ds)
    theta = curvature * ds
    dx = ds * _sinc(xp, theta)
    dy = ds * (theta / 2) * _sinc(xp, theta / 2) ** 2  # (1 - cos t)/k, stable at k -> 0
    z = xp.zeros_like(ds)
    return _stack([dx, dy, z, z, z, theta], ds)


def step(state, action, dt: float = 0.05, params: VehicleParams = VehicleParams()):
    """Advance the bicycle one step.

    state [..., 3] (speed, curvature, accel); action [..., 2] normalized in [-1, 1] (values
    outside are clipped). Returns (new_state [..., 3], rel_pose [..., 6]).
    """
    action = _asarray(action, state)
    u = denormalize_action(_clip(action, -1.0, 1.0))
    k_des = _clip(u[..., 0], -params.max_curvature, params.max_curvature)
    a_des = _clip(u[..., 1], -params.max_decel, params.max_accel)
    v, k, a = state[..., 0], state[..., 1], state[..., 2]
    alpha_k = 1.0 - math.exp(-dt / params.tau_curvature)
    alpha_a = 1.0 - math.exp(-dt / params.tau_accel)
    k1 = k + alpha_k * (k_des - k)
    a1 = a + alpha_a * (a_des - a)
    v1 = _clip(v + a1 * dt, 0.0, params.max_speed)
    ds = 0.5 * (v + v1) * dt
    rel = arc_pose(ds, k1)
    return _stack([v1, k1, a1], state), rel


def limit_jerk(action, accel_now, max_jerk: float, params: VehicleParams = VehicleParams()):
    """The normalized action [..., 2] with its desired accel kept within ``max_jerk`` x ``tau_accel``
    of the car's accel now (``accel_now`` [...], m/s^2): the longitudinal comfort envelope of a
    driving policy's controls, as openpilot's planner limits jerk. Through the first-order actuator
    (``step``) the car's accel then moves at most ``max_jerk`` m/s^3 right after the command and
    slower as it closes in, so a command held over a decision keeps the car's jerk under it; the
    curvature passes unchanged. ``max_jerk`` > 0 (m/s^3)."""
    if not (math.isfinite(float(max_jerk)) and float(max_jerk) > 0):
        raise ValueError(f"limit_jerk: max_jerk={max_jerk!r}, expected > 0 (m/s^3)")
    action = _asarray(action, action)
    now = _asarray(accel_now, action)
    step_ = float(max_jerk) * params.tau_accel
    accel = _clip(action[..., 1] * ACTION_SCALE[1], now - step_, now + step_) / ACTION_SCALE[1]
    return _stack([action[..., 0], accel], action)


def achieved(rel_pose, speed, next_speed, dt: float = 0.05):
    """(curvature, accel) [..., 2] actually driven during a step, from its relative pose
    [..., 6] and the speeds at both ends. Curvature is 0 where the car did not move."""
    xp = _xp(rel_pose)
    speed = _asarray(speed, rel_pose)
    next_speed = _asarray(next_speed, rel_pose)
    dx, dy, dyaw = rel_pose[..., 0], rel_pose[..., 1], rel_pose[..., 5]
    chord = xp.sqrt(dx * dx + dy * dy)
    ds = chord / _sinc(xp, dyaw / 2)  # arc length from chord and turned angle
    moving = ds > 1e-6
    safe = xp.where(moving, ds, xp.ones_like(ds))
    k = xp.where(moving, dyaw / safe, xp.zeros_like(ds))
    acc = (next_speed - speed) / dt
    return _stack([k, acc], rel_pose)


def held_lag(dt: float, tau: float, substeps: int = 1) -> float:
    """Weight ``m`` of the actuator's start state in its mean output over a command held for
    ``dt``, simulated as ``substeps`` steps of ``dt / substeps`` (``step``'s exact lag, each
    sub-step's move at its end state): mean output = (1 - m) command + m start. One sub-step
    gives exp(-dt / tau); a 5 Hz decision held over four 20 Hz frames with tau = 0.1 s, 0.33:
    a third of a held step's curvature is still the curvature it started from."""
    if substeps < 1:
        raise ValueError(f"held_lag: substeps={substeps!r}, expected >= 1")
    h = float(dt) / int(substeps)
    return sum(math.exp(-i * h / tau) for i in range(1, int(substeps) + 1)) / int(substeps)


def inverse(rel_pose, speed, next_speed, dt: float = 0.05, params: VehicleParams = VehicleParams(),
            curvature=None, accel=None, substeps: int = 1):
    """Normalized action [..., 2] that reproduces ``rel_pose`` [..., 6] from ``speed`` to
    ``next_speed``, given the actuator state (``curvature``, ``accel``) before the step.

    Without the actuator state the lag is ignored (the action is the achieved curvature and
    accel, i.e. the steady-state command). With it, the command held over the move's
    ``substeps`` simulator steps whose lagged mean output is the achieved value (``held_lag``).
    The result is clipped to [-1, 1]; it is exact for any action produced by ``step`` (when the
    car is moving and not speed-clamped), and with ``substeps`` > 1 for a held command driven
    at a constant speed.
    """
    ach = achieved(rel_pose, speed, next_speed, dt)
    k1, a1 = ach[..., 0], ach[..., 1]
    if curvature is not None:
        k0, m = _asarray(curvature, rel_pose), held_lag(dt, params.tau_curvature, substeps)
        k1 = (k1 - m * k0) / (1.0 - m)
    if accel is not None:
        a0, m = _asarray(accel, rel_pose), held_lag(dt, params.tau_accel, substeps)
        a1 = (a1 - m * a0) / (1.0 - m)
    return _clip(normalize_action(_stack([k1, a1], rel_pose)), -1.0, 1.0)


def inverse_sequence(rel_pose, speed, dt: float = 0.05, params: VehicleParams = VehicleParams(),
                     substeps: int = 1):
    """BC targets for a logged sequence: rel_pose [..., T, 6], speed [..., T] -> actions
    [..., T-1, 2]. The actuator state before step t is the achieved (curvature, accel) of
    step t-1 (for t = 0 the lag is ignored); each step's command is held over ``substeps``
    simulator steps (``inverse``)."""
    ach = achieved(rel_pose[..., :-1, :], speed[..., :-1], speed[..., 1:], dt)
    xp = _xp(rel_pose)
    prev = ach[..., :-1, :]
    first = ach[..., :1, :]
    prev = xp.concatenate([first, prev], -2) if xp is np else xp.cat([first, prev], -2)
    return inverse(rel_pose[..., :-1, :], speed[..., :-1], speed[..., 1:], dt, params,
                   curvature=prev[..., 0], accel=prev[..., 1], substeps=substeps)


def compose_pose2d(pose, rel):
    """World (x, y, yaw) [..., 3] after a relative move rel [..., 6] (planar part only)."""
    xp = _xp(pose)
    x, y, yaw = pose[..., 0], pose[..., 1], pose[..., 2]
    c, s = xp.cos(yaw), xp.sin(yaw)
    return _stack([x + c * rel[..., 0] - s * rel[..., 1],
                   y + s * rel[..., 0] + c * rel[..., 1],
                   yaw + rel[..., 5]], pose)
