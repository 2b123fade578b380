"""Small synthetic Segments for the data tests (no road world needed): road-like frames
(sky gradient, road, moving lane dashes, boxes, noise), a curving trajectory with exact
per-frame relative poses, and hand-placed disengagements."""

from __future__ import annotations

import cv2
import numpy as np

from drivegpt.data.poses import matrix_to_pose, pose_to_matrix
from drivegpt.data.schema import Segment


def road_frames(t: int, h: int = 32, w: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [T,H,W,3] RGB frames with road-like structure and motion."""
    rng = np.random.default_rng(seed)
    hz = int(h * 0.45)
    sky = np.linspace(0, 1, hz)[:, None, None]
    base = np.empty((h, w, 3), np.float32)
    base[:hz] = np.array([110, 150, 200]) * (1 - sky) + np.array([190, 210, 230]) * sky
    base[hz:] = (70, 120, 60)
    out = np.empty((t, h, w, 3), np.uint8)
    car = rng.integers(40, 220, 3).tolist()
    for i in range(t):
        img = base.copy()
        img = np.clip(img, 0, 255).astype(np.uint8)
        cx = w / 2 + 0.1 * w * np.sin(0.1 * i + seed)
        cv2.fillPoly(img, [np.array([[cx - 2, hz], [cx + 2, hz], [w + 10, h], [-10, h]], np.int32)],
                     (95, 90, 90))
        for k in range(6):
            y = hz + ((k * h / 6 + 2 * i) % (h - hz))
            x = cx + (y - hz) * 0.6
            cv2.line(img, (int(x), int(y)), (int(x + 1), int(min(h - 1, y + 2))), (235, 235, 235), 1)
        s = 4 + 2 * np.sin(0.05 * i)
        cv2.rectangle(img, (int(cx - s), int(hz + 2)), (int(cx + s), int(hz + 2 + s)), car, -1)
        out[i] = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    return out


def make_segment(seed: int = 0, t: int = 24, h: int = 32, w: int = 64, fps: float = 20.0,
                 events: dict[int, int] | None = None, disengaged: tuple[int, int] | None = None,
                 lane_mask: bool = True, frames: bool = True) -> Segment:
    """A valid Segment ``seg{seed:04d}``. ``events``: frame -> cause code; ``disengaged``:
    a [start, stop) frame range where the human drives (engaged False)."""
    rng = np.random.default_rng(seed)
    speed = (10 + rng.uniform(-1, 1) + 0.2 * np.arange(t)).astype(np.float32)
    curv = 0.01 * np.sin(0.2 * np.arange(t) + seed)
    dt = 1.0 / fps
    rel = np.zeros((t, 6), np.float64)
    d = speed[:-1] * dt
    rel[:-1, 0] = d
    rel[:-1, 1] = 0.5 * curv[:-1] * d ** 2
    rel[:-1, 2] = 0.01 * rng.normal(size=t - 1)
    rel[:-1, 3] = 0.002 * rng.normal(size=t - 1)
    rel[:-1, 4] = 0.002 * rng.normal(size=t - 1)
    rel[:-1, 5] = curv[:-1] * d
    rel = rel.astype(np.float32)
    world = np.zeros((t, 6))
    m = np.eye(4)
    for i in range(t):
        world[i] = matrix_to_pose(m)
        m = m @ pose_to_matrix(rel[i])
    engaged = np.ones(t, bool)
    if disengaged:
        engaged[disengaged[0]:disengaged[1]] = False
    dis = np.zeros(t, np.int8)
    for i, c in (events or {}).items():
        dis[i] = c
    extras = {}
    if lane_mask:
        extras["lane_mask"] = rng.random((t, h, w)) < 0.05
    extras["traffic"] = rng.normal(size=(t, 2, 4)).astype(np.float32)
    meta = {"source": "synthetic-test", "segment_id": f"seg{seed:04d}", "fps": fps,
            "camera": {"fx": 40.0, "fy": 40.0, "cx": w / 2, "cy": h / 2, "width": w, "height": h},
            "vehicle": {"wheelbase": 2.7}, "seed": seed}
    return Segment(
        frames=road_frames(t, h, w, seed) if frames else np.zeros((t, h, w, 3), np.uint8),
        rel_pose=rel, world_pose=world.astype(np.float32), speed=speed, engaged=engaged,
        disengage=dis, times=100.0 + np.arange(t) * dt, meta=meta, extras=extras)


def make_item(i: int) -> Segment:
    """Picklable item factory for write_shards (segment i, seed i)."""
    return make_segment(seed=i, t=12 + (i % 3))


def make_token_item(i: int) -> dict:
    seg = make_segment(seed=i, t=12, frames=False, lane_mask=False)
    out = {k: v for k, v in seg.arrays().items() if k != "traffic"}
    out["tokens"] = np.random.default_rng(i).integers(0, 1024, (12, 2, 4)).astype(np.int16)
    out["meta"] = dict(seg.meta, tokens={"vocab_size": 1024, "grid": [2, 4], "tokenizer": "x"})
    return out
