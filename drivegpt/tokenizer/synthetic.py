"""Road frames for tests and benchmarks: the road world when it is installed, else a small
stand-in (sky, grass, a curving road with dashed lane lines and boxes for cars) drawn with
opencv so the tokenizer can be tested without the simulator."""

from __future__ import annotations

import numpy as np


def road_frames(n: int, height: int, width: int, seed: int = 0, seconds: float | None = None,
                prefer_roadworld: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [n, h, w, 3], lane_mask bool [n, h, w])."""
    if prefer_roadworld:
        try:
            from sim.roadworld import drive_segment
        except ImportError:
            drive_segment = None
        if drive_segment is not None:
            frames, masks, k = [], [], 0
            while sum(len(f) for f in frames) < n:
                seg = drive_segment(seed + k, seconds or max(1.0, n / 20.0), None, height, width)
                frames.append(seg.frames)
                masks.append(seg.extras.get("lane_mask", np.zeros(seg.frames.shape[:3], bool)))
                k += 1
            return np.concatenate(frames)[:n], np.concatenate(masks)[:n].astype(bool)
    return standin_frames(n, height, width, seed)


def standin_frames(n: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    h, w = height, width
    frames = np.zeros((n, h, w, 3), np.uint8)
    masks = np.zeros((n, h, w), bool)
    horizon = int(h * 0.42)
    curve, phase = rng.uniform(-0.4, 0.4), rng.uniform(0, 1)
    for i in range(n):
        img = frames[i]
        sky = np.linspace(200, 140, horizon)[:, None, None] * np.array([0.75, 0.85, 1.0])
        img[:horizon] = sky.astype(np.uint8)
        img[horizon:] = (60, 110 + int(10 * np.sin(i / 7)), 50)
        curve += rng.normal(0, 0.02)
        vx = w / 2 + curve * w * 0.5
        rows = np.arange(horizon, h)
        depth = (rows - horizon + 1) / (h - horizon)  # 0 at the horizon, 1 at the bottom
        centre = vx + (w / 2 - vx) * depth + curve * w * 0.25 * (1 - depth) ** 2
        half = 0.05 * w + 0.6 * w * depth
        for r, c, hw in zip(rows, centre, half):
            a, b = int(max(0, c - hw)), int(min(w, c + hw))
            img[r, a:b] = (95, 95, 100)
        lane = np.zeros((h, w), np.uint8)
        dash = (phase + i * 0.15) % 1.0
        for side in (-1.0, 0.0, 1.0):
            for r, c, hw, d in zip(rows, centre, half, depth):
                if side == 0.0 and ((1 / d + dash * 4) % 2.0) > 1.0:
                    continue  # dashed centre line
                x = int(c + side * hw * 0.9)
                t = max(1, int(round(0.012 * w * d * 2)))
                lane[r, max(0, x - t // 2):min(w, x - t // 2 + t)] = 1
        img[lane > 0] = (235, 235, 225)
        masks[i] = lane > 0
        for _ in range(rng.integers(0, 3)):
            d = rng.uniform(0.15, 0.8)
            r = int(horizon + d * (h - horizon))
            c = int(centre[min(len(centre) - 1, r - horizon)] + rng.uniform(-0.5, 0.5) * half[min(len(half) - 1, r - horizon)])
            s = max(2, int(0.15 * w * d))
            color = tuple(int(v) for v in rng.integers(20, 230, 3))
            cv2.rectangle(img, (c - s // 2, r - s // 2), (c + s // 2, r), color, -1)
        noise = rng.normal(0, 2.0, img.shape)
        frames[i] = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return frames, masks
