"""Pictures of rollouts: side-by-side dreamed | real videos (webm VP9 via OpenCV, GIF fallback)
and predicted disengagement curves (PNG via matplotlib). Every file is written atomically.

OpenCV's bundled FFmpeg here has no H.264 encoder ('avc1'/'H264' fail to open; 'mp4v' is
MPEG-4 Part 2, which browsers do not play), but VP9 ('VP90') and VP8 ('VP80') in .webm work
and play in every current browser, so videos are .webm (VP9, else VP8) plus an animated GIF.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from drivegpt.runs import atomic_write_bytes, make_shared
from drivegpt.data.schema import CAUSE_NAMES

WEBM_CODECS = ("VP90", "VP80")


def side_by_side(dreamed: np.ndarray, real: np.ndarray | None, hazard: np.ndarray | None = None,
                 scale: int = 4) -> np.ndarray:
    """dreamed, real uint8 [T, H, W, 3] -> uint8 [T, scale*H + 14, scale*2W, 3] labelled frames;
    a bar under each frame shows the predicted hazard [T] (0..1)."""
    if real is None:
        real = np.zeros_like(dreamed)
    t, h, w, _ = dreamed.shape
    both = np.concatenate([dreamed, real], axis=2)  # t h 2w 3
    both = np.stack([cv2.resize(f, (2 * w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
                     for f in both])
    out = np.zeros((t, h * scale + 14, 2 * w * scale, 3), np.uint8)
    out[:, : h * scale] = both
    for i in range(t):
        f = out[i]
        cv2.putText(f, "dreamed", (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA)
        cv2.putText(f, "real (logged)", (w * scale + 3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (255, 255, 0), 1, cv2.LINE_AA)
        if hazard is not None:
            x = int(round(float(np.clip(hazard[i], 0, 1)) * (2 * w * scale - 1)))
            cv2.rectangle(f, (0, h * scale + 3), (x, h * scale + 11), (255, 64, 64), -1)
            cv2.putText(f, f"hazard {float(hazard[i]):.2f}", (3, h * scale + 11),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_webm(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path | None:
    """RGB uint8 [T, H, W, 3] -> browser-playable .webm (VP9, else VP8); None if neither opens."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    for codec in WEBM_CODECS:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".webm", dir=path.parent)
        os.close(fd)
        try:
            wr = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), float(fps), (w, h))
            if not wr.isOpened():
                continue
            for f in frames:
                wr.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            wr.release()
            if os.path.getsize(tmp) > 0:
                make_shared(tmp)
                os.replace(tmp, path)
                return path
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    from PIL import Image

    imgs = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:],
                 duration=int(round(1000 / fps)), loop=0)
    return atomic_write_bytes(path, buf.getvalue())


def plot_curves(path: str | os.PathLike, times: np.ndarray, probs: np.ndarray, event: np.ndarray,
                horizons: list[float], title: str = "") -> Path:
    """probs [T, n_h, 3] head output, event [T, 3] per-step event probability -> PNG with
    (left) P(disengage within h) per cause at every horizon, (right) cumulative P(disengaged by t)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    colors = ["tab:blue", "tab:red", "tab:green"]
    for c, name in enumerate(CAUSE_NAMES):
        for j, h in enumerate(horizons):
            a.plot(times, probs[:, j, c], color=colors[c], alpha=0.35 + 0.65 * (j + 1) / len(horizons),
                   lw=1, label=f"{name}" if j == len(horizons) - 1 else None)
        b.plot(times, 1 - np.cumprod(1 - event[:, c]), color=colors[c], label=name)
    b.plot(times, 1 - np.cumprod(np.prod(1 - event, axis=1)), color="k", lw=2, label="any")
    a.set(xlabel="time (s)", ylabel="P(disengage within h)", ylim=(0, 1),
          title=f"head output, horizons {horizons} s (darker = longer)")
    b.set(xlabel="time (s)", ylabel="P(disengaged by t)", ylim=(0, 1), title="cumulative")
    a.legend(fontsize=7), b.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
