"""A fixed (untrained) patch-colour tokenizer with the Tokenizer contract's surface.

Each p x p patch becomes one token: its mean colour quantized to ``levels`` per channel
(vocab = levels^3); decoding paints the patch in that colour. It stands in for the VQ
tokenizer in world-model tests and in ``benchmarks/world_model_quality.py --tokenizer patch``
so the world model can be trained and evaluated on road-world video without first training a
tokenizer. It is lossy and coarse (4x8 tokens for 32x64 frames), not a product tokenizer.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import reduce, repeat


class PatchTokenizer:
    def __init__(self, height: int = 32, width: int = 64, patch: int = 8, levels: int = 4):
        if height % patch or width % patch:
            raise ValueError(f"frame size {height}x{width} is not a multiple of the patch size {patch}")
        self.frame_size, self.patch, self.levels = (height, width), patch, levels
        self.grid = (height // patch, width // patch)
        self.vocab_size = levels ** 3

    def encode(self, frames) -> torch.Tensor:
        """uint8 [b, H, W, 3] -> int64 [b, h, w]."""
        x = torch.as_tensor(np.asarray(frames)).float()
        if x.shape[-3:-1] != self.frame_size:
            raise ValueError(f"frames: size {tuple(x.shape[-3:-1])} != tokenizer frame size {self.frame_size}")
        p, n = self.patch, self.levels
        q = (reduce(x, "b (h p) (w q) c -> b h w c", "mean", p=p, q=p) / 256 * n).long().clamp(0, n - 1)
        return q[..., 0] * n * n + q[..., 1] * n + q[..., 2]

    def decode(self, tokens) -> torch.Tensor:
        """int [b, h, w] -> uint8 [b, H, W, 3]."""
        t, n = torch.as_tensor(tokens).long(), self.levels
        rgb = torch.stack([t // (n * n), (t // n) % n, t % n], -1)
        img = ((rgb.float() + 0.5) * 256 / n).clamp(0, 255).to(torch.uint8)
        return repeat(img, "b h w c -> b (h p) (w q) c", p=self.patch, q=self.patch)
