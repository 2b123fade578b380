"""Reconstruction losses, SSIM/PSNR metrics and the optional patch-GAN discriminator.

No pretrained networks (no LPIPS): the perceptual pressure comes from SSIM, an image-gradient
term (keeps thin lane lines sharp) and, after a warm-up, a hinge patch-GAN.
Images are float [b, 3, h, w] in [-1, 1] unless said otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gauss_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, k, k]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, size: int = 11) -> torch.Tensor:
    """Mean SSIM per image (Wang et al. 2004, Gaussian window, channel-wise) -> [b]."""
    c = a.shape[1]
    size = min(size, a.shape[-1], a.shape[-2])
    win = _gauss_window(size, 1.5 * size / 11, a.device, torch.float32).expand(c, 1, size, size)
    a, b = a.float(), b.float()
    mu_a = F.conv2d(a, win, groups=c)
    mu_b = F.conv2d(b, win, groups=c)
    s_aa = F.conv2d(a * a, win, groups=c) - mu_a**2
    s_bb = F.conv2d(b * b, win, groups=c) - mu_b**2
    s_ab = F.conv2d(a * b, win, groups=c) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return m.flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR per image -> [b] (dB)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def gradient_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences (edges, lane lines)."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(a), dx(b)) + F.l1_loss(dy(a), dy(b))


def edge_weighted_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 weighted by the target's local contrast: each pixel's weight is the largest absolute
    finite difference (over channels) touching it, normalised to mean 1 per batch. Thin,
    high-contrast structure (lane markings, road edges, car outlines) covers a few percent of
    the pixels; this term gives it the share of the loss its visual importance asks for, from
    the image alone (no lane mask: it works on any camera)."""
    gx = (b[..., :, 1:] - b[..., :, :-1]).abs().amax(1, keepdim=True)
    gy = (b[..., 1:, :] - b[..., :-1, :]).abs().amax(1, keepdim=True)
    w = torch.zeros_like(b[:, :1])
    w[..., :, 1:] += gx
    w[..., :, :-1] += gx
    w[..., 1:, :] += gy
    w[..., :-1, :] += gy
    w = w / w.mean().clamp_min(1e-3)
    return ((a - b).abs() * w).mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQ-GAN): a map of real/fake logits over overlapping patches."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers):
            nxt = channels * min(2**i, 8)
            mods += [nn.Conv2d(ch, nxt, 4, 2, 1), nn.GroupNorm(8 if nxt % 8 == 0 else 1, nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        mods += [nn.Conv2d(ch, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class ReconstructionLoss(nn.Module):
    """Weighted L1 + MSE (+ SSIM, gradient, edge-weighted L1) (+ commitment, added by the caller)."""

    def __init__(self, l1: float = 1.0, mse: float = 1.0, ssim_w: float = 0.0, grad: float = 0.0,
                 edge: float = 0.0):
        super().__init__()
        self.w_l1, self.w_mse, self.w_ssim, self.w_grad = float(l1), float(mse), float(ssim_w), float(grad)
        self.w_edge = float(edge)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        # in fp32 under bf16/fp16 autocast too: SSIM's E[x^2] - mu^2 cancels catastrophically in
        # bf16 (NaN losses within a few steps of bf16-mixed training)
        with torch.autocast(device_type=recon.device.type, enabled=False):
            return self._terms(recon.float(), target.float())

    def _terms(self, recon: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = {"l1": F.l1_loss(recon, target), "mse": F.mse_loss(recon, target)}
        total = self.w_l1 * parts["l1"] + self.w_mse * parts["mse"]
        if self.w_ssim:
            parts["ssim"] = 1.0 - ssim(recon, target).mean()
            total = total + self.w_ssim * parts["ssim"]
        if self.w_grad:
            parts["grad"] = gradient_loss(recon, target)
            total = total + self.w_grad * parts["grad"]
        if self.w_edge:
            parts["edge"] = edge_weighted_l1(recon, target)
            total = total + self.w_edge * parts["edge"]
        parts["rec"] = total
        return parts
