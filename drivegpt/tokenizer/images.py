"""Pictures of the tokenizer: reconstruction grids (real | recon | error) and codebook usage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from einops import rearrange

from drivegpt.runs import atomic_path


def recon_grid(real: np.ndarray, recon: np.ndarray, n: int = 8, gain: float = 4.0) -> np.ndarray:
    """uint8 [b, h, w, 3] x2 -> uint8 image [n*h, 3*w, 3]: columns real | recon | |error|*gain."""
    real, recon = np.asarray(real)[:n], np.asarray(recon)[:n]
    err = np.clip(np.abs(real.astype(np.int16) - recon.astype(np.int16)).mean(-1, keepdims=True) * gain, 0, 255)
    err = np.repeat(err.astype(np.uint8), 3, axis=-1)
    cols = np.stack([real, recon, err], axis=1)  # [n, 3, h, w, c]
    return rearrange(cols, "n k h w c -> (n h) (k w) c")


def save_png(path: str | Path, image: np.ndarray, scale: int = 1) -> Path:
    """Write an RGB uint8 image as PNG atomically (nearest-neighbour upscaled by ``scale``)."""
    import cv2

    img = np.ascontiguousarray(image)
    if scale > 1:
        img = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", img[..., ::-1])
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.tobytes())
    return Path(path)


def usage_plot(counts: np.ndarray, path: str | Path, title: str = "codebook usage") -> Path:
    """Bar chart of code frequencies sorted by count (log scale) -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(counts, dtype=np.float64)
    used = int((counts > 0).sum())
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.bar(np.arange(len(counts)), np.sort(counts)[::-1] + 1e-9, width=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("code (sorted by frequency)")
    ax.set_ylabel("count")
    ax.set_title(f"{title}: {used}/{len(counts)} codes used")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def upscale_for(h: int) -> int:
    """Integer upscaling so tiny frames are visible (32-pixel frames -> x4)."""
    return max(1, 128 // max(h, 1))
