"""Counterfactual replay: render what the camera would see along any relative-pose path.

``replay(meta, world_pose0, rel_poses, start_index, traffic=None)``: rebuild the segment's
road world from ``meta["sim"]`` (seed + config), put the ego at ``world_pose0`` (the logged
world pose of frame ``start_index``), apply ``rel_poses`` [N, 6] one after the other and
render the frame after each move: frames[i] is the view after rel_poses[0..i], i.e. it
corresponds to logged frame ``start_index + 1 + i`` when the logged poses are replayed.
Only the planar part (dx, dy, dyaw) is used (the world is flat).

Other vehicles: ``traffic`` is the segment's logged traffic array [T, n, 4]; frame i shows
row ``start_index + 1 + i`` (clamped to the last row), i.e. traffic moves as logged and
does not react to the counterfactual ego. Without ``traffic`` no vehicles are drawn.
"""

from __future__ import annotations

import numpy as np

from drivegpt.sim.vehicle import compose_pose2d

from .config import RoadWorldConfig
from .world import World


def world_from_meta(meta: dict, height: int | None = None, width: int | None = None) -> World:
    try:
        sim = meta["sim"]
        cfg = RoadWorldConfig.from_dict(sim["config"])
        seed = int(sim["seed"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"replay: segment {meta.get('segment_id', '?')!r} meta has no usable "
                         f"'sim' entry (seed, config): {e}") from None
    return World(cfg, seed, height=height or sim.get("height"), width=width or sim.get("width"),
                 traffic=False)


def replay(meta: dict, world_pose0, rel_poses, start_index: int = 0, traffic=None,
           height: int | None = None, width: int | None = None, s_hint: float | None = None,
           mask: bool = False):
    """Frames uint8 [N, H, W, 3] (and lane masks bool [N, H, W] when ``mask``)."""
    world = world_from_meta(meta, height, width)
    rel_poses = np.asarray(rel_poses, np.float64).reshape(-1, 6)
    p0 = np.asarray(world_pose0, np.float64).reshape(6)
    pose = np.array([p0[0], p0[1], p0[5]])
    world.set_pose(*pose, s_hint=s_hint)
    n = len(rel_poses)
    H, W = world.camera.height, world.camera.width
    frames = np.empty((n, H, W, 3), np.uint8)
    masks = np.empty((n, H, W), bool) if mask else None
    if traffic is not None:
        traffic = np.asarray(traffic, np.float32)
        if traffic.ndim != 3 or traffic.shape[-1] != 4:
            raise ValueError(f"replay: traffic must be [T, n, 4], got shape {traffic.shape}")
    empty = np.zeros((0, 4), np.float32)
    for i in range(n):
        pose = compose_pose2d(pose, rel_poses[i])
        world.set_pose(*pose, s_hint=world.s)
        veh = empty if traffic is None else traffic[min(start_index + 1 + i, len(traffic) - 1)]
        out = world.renderer.render(world.pose, world.s, veh, mask=mask)
        if mask:
            frames[i], masks[i] = out
        else:
            frames[i] = out
    return (frames, masks) if mask else frames
