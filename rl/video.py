"""Rollout videos a person can look at: WebM (plays in browsers) + GIF, via sim.learned.video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from drivegpt.sim.learned.video import write_gif, write_webm


def upscale(frames: np.ndarray, min_height: int = 128) -> np.ndarray:
    """Nearest-neighbour upscale uint8 [T H W 3] so tiny frames are visible."""
    f = max(1, int(np.ceil(min_height / frames.shape[1])))
    return frames.repeat(f, axis=1).repeat(f, axis=2) if f > 1 else frames


def caption(frame: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(frame.copy())
    cv2.putText(out, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(out, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA)
    return out


def write_video(stem: str | Path, frames: np.ndarray, fps: float = 5.0) -> list[Path]:
    """Write ``stem``.webm and ``stem``.gif atomically from RGB uint8 [T H W 3]; returns the paths
    (the WebM only where OpenCV can encode VP9/VP8; the GIF always)."""

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_video({stem}): frames must be uint8 [T,H,W,3] with T > 0, got "
                         f"{frames.dtype} {frames.shape}")
    stem = Path(stem)
    webm = write_webm(stem.with_suffix(".webm"), frames, fps)
    return ([webm] if webm is not None else []) + [write_gif(stem.with_suffix(".gif"), frames, fps)]
