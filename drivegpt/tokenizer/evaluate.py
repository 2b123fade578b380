"""Scoring a tokenizer (``drivegpt eval tokenizer``, stage ``drivegpt.stages.eval_tokenizer``):
reconstruction quality and codebook use on held-out frames.

Frames come from the held-out segments (drivegpt.data.loaders.split_of, data.val_fraction). Metrics
(metrics.json, prefix ``tokenizer_eval/``): PSNR and SSIM (mean over frames), lane-marking
PSNR (pooled MSE over the pixels of the road world's ``lane_mask``; null when the shards
carry no mask), codebook usage (% of codes used over the eval set) and perplexity of the
code distribution. Beside them, the trivial baseline the tokenizer must beat (``bicubic_psnr``,
``bicubic_ssim``, ``bicubic_lane_psnr``): each frame down-sampled bicubically to the token grid
(h' x w' RGB pixels, as many numbers per frame as the grid has tokens x 3) and back up. Pictures: eval_recon.png (real | recon | error), eval_usage.png.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from drivegpt.tokenizer.losses import psnr, ssim
from drivegpt.tokenizer.model import Tokenizer, to_float, to_uint8


class Scorer:
    """Accumulates reconstruction metrics over batches of uint8 frames."""

    def __init__(self, vocab_size: int):
        self.counts = np.zeros(vocab_size, np.int64)
        self.psnr, self.ssim = [], []
        self.lane_se, self.lane_n = 0.0, 0
        self.n = 0

    def add(self, frames: torch.Tensor, recon: torch.Tensor, tokens: torch.Tensor,
            lane_mask: torch.Tensor | None = None) -> None:
        """frames/recon uint8 [b,h,w,3], tokens int64 [b,h',w'], lane_mask bool [b,h,w] or None."""
        a, b = to_float(frames.cpu()), to_float(recon.cpu())
        self.psnr += psnr(a, b).tolist()
        self.ssim += ssim(a, b).tolist()
        self.counts += np.bincount(tokens.cpu().numpy().ravel(), minlength=len(self.counts))
        if lane_mask is not None:
            m = lane_mask.cpu().bool()
            diff = (frames.cpu().float() - recon.cpu().float())[m]  # [n_pixels, 3] in 0..255
            self.lane_se += float(diff.pow(2).sum())
            self.lane_n += int(diff.numel())
        self.n += len(frames)

    def metrics(self) -> dict:
        p = self.counts / max(1, self.counts.sum())
        nz = p[p > 0]
        lane = None
        if self.lane_n:
            lane = float(10 * np.log10(255.0**2 / max(self.lane_se / self.lane_n, 1e-12)))
        return {
            "frames": self.n,
            "psnr": float(np.mean(self.psnr)) if self.psnr else None,
            "ssim": float(np.mean(self.ssim)) if self.ssim else None,
            "lane_psnr": lane,
            "lane_pixels": self.lane_n // 3,
            "codebook_usage": float((self.counts > 0).mean() * 100.0),
            "perplexity": float(np.exp(-(nz * np.log(nz)).sum())) if len(nz) else None,
            "vocab_size": len(self.counts),
        }


def bicubic_baseline(frames: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """uint8 [b,h,w,3] -> the same frames bicubically down-sampled to ``grid`` (h', w') and back up."""
    x = to_float(frames.cpu())
    lo = F.interpolate(x, size=tuple(grid), mode="bicubic", align_corners=False, antialias=True)
    up = F.interpolate(lo, size=tuple(x.shape[-2:]), mode="bicubic", align_corners=False)
    return to_uint8(up.clamp(-1.0, 1.0))


def score(model: Tokenizer, batches, max_frames: int) -> tuple[dict, Scorer, tuple]:
    """Run ``model`` over ``batches`` of {"frame": uint8 [b,h,w,3], "lane_mask"?: bool [b,h,w]}.
    The metrics include the bicubic baseline's (``bicubic_*``) on the same frames."""
    scorer, base, sample = Scorer(model.vocab_size), Scorer(1), None
    for batch in batches:
        fr = torch.as_tensor(batch["frame"])
        lane = batch.get("lane_mask")
        lane = None if lane is None else torch.as_tensor(lane)
        tokens, recon = model.reconstruct(fr)
        scorer.add(fr, recon.cpu(), tokens, lane)
        base.add(fr, bicubic_baseline(fr, model.grid), torch.zeros(1, dtype=torch.long), lane)
        if sample is None:
            sample = (fr[:8].numpy(), recon[:8].cpu().numpy())
        if scorer.n >= max_frames:
            break
    b = base.metrics()
    metrics = {**scorer.metrics(), "bicubic_psnr": b["psnr"], "bicubic_ssim": b["ssim"],
               "bicubic_lane_psnr": b["lane_psnr"]}
    return metrics, scorer, sample


def batches(dataset, batch_size: int):
    buf: list[dict] = []
    for item in dataset:
        buf.append(item)
        if len(buf) == batch_size:
            yield _stack(buf)
            buf = []
    if buf:
        yield _stack(buf)


def _stack(items: list[dict]) -> dict:
    out = {"frame": np.stack([i["frame"] for i in items])}
    if all("lane_mask" in i for i in items):
        out["lane_mask"] = np.stack([i["lane_mask"] for i in items])
    return out
