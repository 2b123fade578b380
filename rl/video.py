"""Rollout videos a person can look at: WebM (VP8, plays in browsers) + GIF fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
    """Write ``stem``.webm and ``stem``.gif atomically from RGB uint8 [T H W 3]; returns the paths."""
    import cv2
    from PIL import Image

    from drivegpt.runs import atomic_path

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_video({stem}): frames must be uint8 [T,H,W,3] with T > 0, got "
                         f"{frames.dtype} {frames.shape}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    webm = stem.with_suffix(".webm")
    with atomic_path(webm) as tmp:
        tmp_webm = tmp.with_suffix(".webm")  # the container is chosen by the extension
        w = cv2.VideoWriter(str(tmp_webm), cv2.VideoWriter_fourcc(*"VP80"), float(fps),
                            (frames.shape[2], frames.shape[1]))
        if w.isOpened():
            for f in frames:
                w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            w.release()
            tmp_webm.replace(tmp)
    if webm.exists() and webm.stat().st_size > 0:
        out.append(webm)
    gif = stem.with_suffix(".gif")
    with atomic_path(gif) as tmp:
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:],
                     duration=int(1000 / fps), loop=0)
    out.append(gif)
    return out
