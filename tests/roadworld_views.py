"""The road world as the ground truth of camera geometry: a frame and the true view from the
same car moved (the warps of drivegpt.data.camera and drivegpt.rl.viewpoint are scored on them)."""

from __future__ import annotations

import math

import numpy as np

from drivegpt.data.camera import Camera

ROAD = slice(36, None)  # image rows below the horizon at 64x128


def psnr(a, b, rows=slice(None)) -> float:
    d = (a[rows].astype(float) - b[rows].astype(float)) ** 2
    return 10 * math.log10(255.0 ** 2 / d.mean())


def moved_views(moves, seeds=range(3), height: int = 64, width: int = 128):
    """For each road ``seed`` (driven 30 steps) and each move ``(dx, dy, dyaw)`` (metres forward,
    left, radians left, in the car's frame): yields ``(frame, camera, move, true)``, ``true`` the
    road world's render from the moved car."""
    from drivegpt.sim.roadworld.config import RoadWorldConfig
    from drivegpt.sim.roadworld.world import World

    def render(w):
        f = w.render()
        return f[0] if isinstance(f, tuple) else f

    cfg = RoadWorldConfig.from_dict({"height": height, "width": width})
    for seed in seeds:
        w = World(cfg, seed)
        for _ in range(30):
            w.step(np.zeros(2))
        x, y, h = w.pose
        base, cam = render(w), Camera.from_meta(w.camera.intrinsics())
        c, s = math.cos(h), math.sin(h)
        for dx, dy, dyaw in moves:
            w.set_pose(x + c * dx - s * dy, y + s * dx + c * dy, h + dyaw, s_hint=w.s)
            true = render(w)
            w.set_pose(x, y, h, s_hint=w.s)
            yield base, cam, (dx, dy, dyaw), true
