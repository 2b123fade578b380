"""Metrics for the world model: disengagement AUROC/AP vs base rate, PSNR/SSIM, R^2."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CAUSES = ("STEER", "BRAKE", "GAS")


def _auroc_ap(p: torch.Tensor, y: torch.Tensor) -> tuple[float | None, float | None]:
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    if y.numel() == 0 or y.min() == y.max():  # undefined with one class
        return None, None
    yi = y.long()
    return float(binary_auroc(p, yi)), float(binary_average_precision(p, yi))


def disengage_metrics(probs, target, mask, horizons) -> dict:
    """probs/target/mask [..., n_h, 3] -> AUROC and AP per horizon (pooled over causes) and per
    (horizon, cause), with the base rate (AP of a constant predictor) and positive counts."""
    probs, target, mask = (torch.as_tensor(x).float().reshape(-1, len(horizons), len(CAUSES))
                           for x in (probs, target, mask))
    out: dict = {}
    for i, h in enumerate(horizons):
        sel = mask[:, i] > 0
        p, y = probs[:, i][sel], target[:, i][sel]
        auroc, ap = _auroc_ap(p, y)
        out[f"auroc_{h:g}s"], out[f"ap_{h:g}s"] = auroc, ap
        out[f"base_rate_{h:g}s"] = float(y.mean()) if y.numel() else None
        out[f"positives_{h:g}s"] = int(y.sum())
        for c, name in enumerate(CAUSES):
            s = mask[:, i, c] > 0
            pc, yc = probs[:, i, c][s], target[:, i, c][s]
            a, ap_c = _auroc_ap(pc, yc)
            out[f"auroc_{h:g}s_{name}"], out[f"ap_{h:g}s_{name}"] = a, ap_c
            out[f"base_rate_{h:g}s_{name}"] = float(yc.mean()) if yc.numel() else None
    return out


def psnr(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] pairs -> PSNR in dB per image [...]."""
    err = ((pred.astype(np.float64) - true.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))
    return 10 * np.log10(255.0 ** 2 / np.maximum(err, 1e-10))


def ssim(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] pairs -> SSIM per image [N] (Gaussian window 7, sigma 1.5, on luma-free RGB mean)."""
    x = torch.as_tensor(pred, dtype=torch.float64).permute(0, 3, 1, 2) / 255.0
    y = torch.as_tensor(true, dtype=torch.float64).permute(0, 3, 1, 2) / 255.0
    g = torch.exp(-((torch.arange(7, dtype=torch.float64) - 3) ** 2) / (2 * 1.5 ** 2))
    g = (g / g.sum())
    win = (g[:, None] * g[None, :]).expand(3, 1, 7, 7).contiguous()

    def blur(z):
        return F.conv2d(F.pad(z, (3, 3, 3, 3), mode="replicate"), win, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def r2(pred: np.ndarray, true: np.ndarray) -> float | None:
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    var = ((true - true.mean()) ** 2).sum()
    if var <= 0:
        return None
    return float(1 - ((pred - true) ** 2).sum() / var)
