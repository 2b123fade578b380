"""Small batched torch helpers: SE(3) pose composition and a counter-based random stream.

Poses follow data/schema.py: (dx, dy, dz, roll, pitch, yaw), R = Rz(yaw) Ry(pitch) Rx(roll).
"""

from __future__ import annotations

import torch


def euler_to_matrix(rpy: torch.Tensor) -> torch.Tensor:
    """rpy [..., 3] (roll, pitch, yaw) -> rotation matrices [..., 3, 3]."""
    r, p, y = rpy.unbind(-1)
    cr, sr, cp, sp, cy, sy = r.cos(), r.sin(), p.cos(), p.sin(), y.cos(), y.sin()
    row0 = torch.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1)
    row1 = torch.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1)
    row2 = torch.stack([-sp, cp * sr, cp * cr], -1)
    return torch.stack([row0, row1, row2], -2)


def matrix_to_euler(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> (roll, pitch, yaw) [..., 3]."""
    yaw = torch.atan2(m[..., 1, 0], m[..., 0, 0])
    pitch = torch.asin((-m[..., 2, 0]).clamp(-1.0, 1.0))
    roll = torch.atan2(m[..., 2, 1], m[..., 2, 2])
    return torch.stack([roll, pitch, yaw], -1)


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pose b expressed in frame a, then a in frame 0 -> b in frame 0. a, b: [..., 6]."""
    ra, rb = euler_to_matrix(a[..., 3:]), euler_to_matrix(b[..., 3:])
    t = a[..., :3] + torch.einsum("...ij,...j->...i", ra, b[..., :3])
    return torch.cat([t, matrix_to_euler(ra @ rb)], -1)


_M32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Integer hash (lowbias32) of int64 tensors, elementwise; result in [0, 2^32)."""
    x = x.to(torch.int64) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def uniform(seed: torch.Tensor, *counters: torch.Tensor | int) -> torch.Tensor:
    """Reproducible U[0,1) per element from (seed, counters...): no generator state, so one env
    in a batch draws exactly what it would draw alone."""
    h = hash32(seed)
    for c in counters:
        c = torch.as_tensor(c, device=seed.device, dtype=torch.int64)
        h = hash32(h ^ hash32(c + 0x9E3779B9))
    return h.to(torch.float64).div(2.0**32).to(torch.float32)
