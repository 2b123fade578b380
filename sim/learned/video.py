"""Pictures of rollouts: side-by-side dreamed | real videos (webm VP9 through PyAV, plus a GIF)
and predicted disengagement curves (PNG via matplotlib). Every file is written atomically.

Videos are .webm (VP9, which every current browser plays) plus an animated GIF. They were
written through OpenCV's VideoWriter, whose VP9 runs libvpx's slowest preset (2.9 s for a
21-frame clip, 18 s of the demo's rollout stage); PyAV's real-time preset takes 0.14 s.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from drivegpt.data.video import encode_webm
from drivegpt.runs import atomic_write_bytes
from drivegpt.data.schema import CAUSE_NAMES

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
    """RGB uint8 [T, H, W, 3] -> browser-playable .webm (VP9 through PyAV,
    ``drivegpt.data.video.encode_webm``), written atomically; None if no VP9 encoder is there."""
    try:
        data = encode_webm(frames, fps)
    except Exception as e:  # an FFmpeg build without libvpx: the GIF still shows the clip
        warnings.warn(f"write_webm({path}): no VP9 video ({type(e).__name__}: {e}); the GIF remains", stacklevel=2)
        return None
    return atomic_write_bytes(path, data)


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
