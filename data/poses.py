"""6-DoF pose helpers in the schema's convention (numpy, float64 inside).

A pose is (x, y, z, roll, pitch, yaw); R = Rz(yaw) @ Ry(pitch) @ Rx(roll). ``rel_pose[t]``
is frame t+1 in the ego frame at t, so chaining relative poses is the SE(3) product
T(0->n) = T(0->1) @ T(1->2) @ ... .
"""

from __future__ import annotations

import numpy as np


def euler_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """(..., 3) roll, pitch, yaw -> (..., 3, 3) rotation matrices Rz @ Ry @ Rx."""
    rpy = np.asarray(rpy, dtype=np.float64)
    r, p, y = rpy[..., 0], rpy[..., 1], rpy[..., 2]
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    m = np.empty(rpy.shape[:-1] + (3, 3))
    m[..., 0, 0] = cy * cp
    m[..., 0, 1] = cy * sp * sr - sy * cr
    m[..., 0, 2] = cy * sp * cr + sy * sr
    m[..., 1, 0] = sy * cp
    m[..., 1, 1] = sy * sp * sr + cy * cr
    m[..., 1, 2] = sy * sp * cr - cy * sr
    m[..., 2, 0] = -sp
    m[..., 2, 1] = cp * sr
    m[..., 2, 2] = cp * cr
    return m


def matrix_to_euler(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) roll, pitch, yaw (inverse of ``euler_to_matrix``, |pitch| < pi/2)."""
    m = np.asarray(m, dtype=np.float64)
    pitch = np.arcsin(np.clip(-m[..., 2, 0], -1.0, 1.0))
    roll = np.arctan2(m[..., 2, 1], m[..., 2, 2])
    yaw = np.arctan2(m[..., 1, 0], m[..., 0, 0])
    return np.stack([roll, pitch, yaw], axis=-1)


def pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """(..., 6) poses -> (..., 4, 4) homogeneous transforms."""
    pose = np.asarray(pose, dtype=np.float64)
    m = np.zeros(pose.shape[:-1] + (4, 4))
    m[..., :3, :3] = euler_to_matrix(pose[..., 3:6])
    m[..., :3, 3] = pose[..., :3]
    m[..., 3, 3] = 1.0
    return m


def matrix_to_pose(m: np.ndarray) -> np.ndarray:
    """(..., 4, 4) -> (..., 6) poses."""
    m = np.asarray(m, dtype=np.float64)
    return np.concatenate([m[..., :3, 3], matrix_to_euler(m[..., :3, :3])], axis=-1)


def compose_rel_poses(rel: np.ndarray) -> np.ndarray:
    """rel (n, 6) consecutive relative poses -> (6,) pose of the last frame in the first's frame."""
    acc = np.eye(4)
    for m in pose_to_matrix(rel):
        acc = acc @ m
    return matrix_to_pose(acc)


def strided_rel_poses(rel_pose: np.ndarray, starts: np.ndarray, stride: int) -> np.ndarray:
    """Compose per-frame rel_pose [T,6] over ``stride`` frames from each start -> [len(starts), 6].

    Row k is the pose of frame starts[k] + stride in the ego frame at starts[k] (requires
    starts[k] + stride <= T - 1, so every composed step exists in the log).
    """
    starts = np.asarray(starts, dtype=np.int64)
    if stride == 1:
        return np.asarray(rel_pose, dtype=np.float64)[starts]
    mats = pose_to_matrix(rel_pose)  # [T, 4, 4]
    acc = mats[starts]
    for j in range(1, stride):
        acc = acc @ mats[starts + j]
    return matrix_to_pose(acc)
