"""Quantizers: EMA vector quantization (VQ-VAE-2 / VQ-GAN style) and FSQ.

Both map encoder features ``z`` float [b, d, h, w] to

    z_q      float [b, d, h, w]  quantized features with a straight-through gradient to z
    indices  int64 [b, h, w]     token ids in [0, vocab_size)
    loss     scalar              commitment loss (0 for FSQ)

and back: ``embed(indices) -> float [b, h, w, d]``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _dist_on():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _dist_on():
        dist.broadcast(t, src=0)
    return t


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None,
           l2: bool = False) -> torch.Tensor:
    """Lloyd's k-means on x [n, d] -> centroids [k, d]. With n < k, seeds repeat (+ jitter)."""
    n = x.shape[0]
    idx = torch.randint(n, (k,), generator=generator, device="cpu").to(x.device) if n < k else \
        torch.randperm(n, generator=generator, device="cpu")[:k].to(x.device)
    c = x[idx].clone()
    if n < k:  # repeated seeds: jitter so they can separate
        c = c + 1e-3 * x.std() * torch.randn(c.shape, generator=generator, device="cpu").to(x.device)
    for _ in range(iters):
        if l2:
            c = F.normalize(c, dim=-1)
        assign = torch.cdist(x, c).argmin(dim=1)  # [n]
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        c[filled] = sums[filled] / counts[filled, None]
    return F.normalize(c, dim=-1) if l2 else c


class EMAVectorQuantizer(nn.Module):
    """Codebook [K, d] updated by exponential moving averages (no codebook gradient).

    - k-means initialisation from the first training batch's encoder outputs;
    - dead-code restart: a code unused for ``dead_after`` training steps is re-seeded from a
      random encoder output of the current batch;
    - optional l2-normalised lookup (cosine similarity, codes on the unit sphere);
    - under DDP the EMA statistics are all-reduced and re-seeding is broadcast from rank 0,
      so every rank holds the same codebook.
    """

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, commitment: float = 0.25,
                 eps: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 10,
                 dead_after: int = 100, l2_normalize: bool = False):
        super().__init__()
        self.codebook_size, self.dim = int(codebook_size), int(dim)
        self.decay, self.commitment, self.eps = float(decay), float(commitment), float(eps)
        self.kmeans_iters, self.dead_after = int(kmeans_iters), int(dead_after)
        self.l2 = bool(l2_normalize)
        embed = torch.randn(self.codebook_size, self.dim)
        if self.l2:
            embed = F.normalize(embed, dim=-1)
        self.register_buffer("embed", embed)  # [K, d]
        self.register_buffer("embed_avg", embed.clone())  # [K, d] EMA of assigned sums
        self.register_buffer("cluster_size", torch.ones(self.codebook_size))  # [K] EMA counts
        self.register_buffer("unused_steps", torch.zeros(self.codebook_size, dtype=torch.long))
        self.register_buffer("initted", torch.tensor(not kmeans_init))

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        x = rearrange(z, "b d h w -> (b h w) d").float()
        return F.normalize(x, dim=-1) if self.l2 else x

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest code for each row of x [n, d] -> int64 [n]."""
        e = self.embed
        # |x - e|^2 = |x|^2 - 2 x.e + |e|^2 ; |x|^2 is constant per row
        dist_ = (e * e).sum(1)[None, :] - 2.0 * x @ e.t()
        return dist_.argmin(dim=1)

    @torch.no_grad()
    def init_codebook(self, x: torch.Tensor) -> None:
        c = kmeans(x, self.codebook_size, self.kmeans_iters, l2=self.l2)
        c = _broadcast(c.contiguous())
        self.embed.copy_(c)
        self.embed_avg.copy_(c)
        self.cluster_size.fill_(1.0)
        self.unused_steps.zero_()
        self.initted.fill_(True)

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, indices: torch.Tensor) -> None:
        """Move each code toward the mean of the vectors assigned to it (x [n,d], indices [n])."""
        onehot_sum = torch.zeros_like(self.embed).index_add_(0, indices, x)  # [K, d]
        counts = torch.bincount(indices, minlength=self.codebook_size).to(x.dtype)  # [K]
        _all_reduce(onehot_sum)
        _all_reduce(counts)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        embed = self.embed_avg / smoothed[:, None]
        self.embed.copy_(F.normalize(embed, dim=-1) if self.l2 else embed)
        used = counts > 0
        self.unused_steps.add_(1)
        self.unused_steps[used] = 0

    @torch.no_grad()
    def restart_dead(self, x: torch.Tensor) -> int:
        """Re-seed codes unused for ``dead_after`` steps from random rows of x; returns how many."""
        if self.dead_after <= 0:
            return 0
        dead = self.unused_steps >= self.dead_after
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        pick = torch.randint(x.shape[0], (n_dead,), device=x.device)
        new = x[pick] + 1e-4 * torch.randn(n_dead, self.dim, device=x.device)
        if self.l2:
            new = F.normalize(new, dim=-1)
        new = _broadcast(new.contiguous())
        self.embed[dead] = new
        self.embed_avg[dead] = new
        self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0
        return n_dead

    def forward(self, z: torch.Tensor):
        with torch.autocast(device_type=z.device.type, enabled=False):  # distances in fp32
            return self._forward(z)

    def _forward(self, z: torch.Tensor):
        b, _, h, w = z.shape
        x = self._flat(z)  # [(b h w), d]
        if self.training and not bool(self.initted):
            self.init_codebook(x.detach())
        indices = self.lookup(x.detach())
        if self.training:
            self.ema_update(x.detach(), indices)
            self.restart_dead(x.detach())
        q = self.embed[indices]  # [(b h w), d]
        loss = self.commitment * F.mse_loss(x, q.detach())
        q = x + (q - x).detach()  # straight-through estimator
        z_q = rearrange(q, "(b h w) d -> b d h w", b=b, h=h, w=w).to(z.dtype)
        return z_q, rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w), loss

    def embed_tokens(self, indices: torch.Tensor) -> torch.Tensor:
        """int64 [..., h, w] -> float [..., h, w, d]."""
        return self.embed[indices]


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023): each of len(levels) channels is
    bounded and rounded to ``levels[i]`` values; the code is the mixed-radix number of the
    per-channel levels (vocab = prod(levels)). Codebook-free: no commitment, no dead codes."""

    def __init__(self, levels: list[int], dim: int):
        super().__init__()
        self.levels_list = [int(v) for v in levels]
        if any(v < 2 for v in self.levels_list):
            raise ValueError(f"tokenizer.fsq.levels={self.levels_list}: every level must be >= 2")
        self.dim = int(dim)
        self.register_buffer("levels", torch.tensor(self.levels_list, dtype=torch.long), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + self.levels_list[:-1], dtype=torch.long), 0)
        self.register_buffer("basis", basis, persistent=False)
        c = len(self.levels_list)
        self.project_in = nn.Conv2d(self.dim, c, 1) if self.dim != c else nn.Identity()
        self.project_out = nn.Conv2d(c, self.dim, 1) if self.dim != c else nn.Identity()

    @property
    def vocab_size(self) -> int:
        return int(math.prod(self.levels_list))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., c] -> values in the range of each channel's lattice (pre-rounding)."""
        lv = self.levels.to(z.dtype)
        half = (lv - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., c] -> lattice codes in [-1, 1] (straight-through)."""
        half_width = (self.levels // 2).to(z.dtype)
        return _round_ste(self.bound(z)) / half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Lattice codes [..., c] in [-1, 1] -> int64 [...]."""
        half_width = self.levels // 2
        digits = (codes * half_width + half_width).round().long()
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """int64 [...] -> lattice codes [..., c] in [-1, 1]."""
        half_width = self.levels // 2
        digits = (indices[..., None] // self.basis) % self.levels
        return ((digits - half_width).float() / half_width.float())

    def forward(self, z: torch.Tensor):
        with torch.autocast(device_type=z.device.type, enabled=False):  # exact lattice in fp32
            return self._forward(z.float())

    def _forward(self, z: torch.Tensor):
        zc = self.project_in(z)  # [b, c, h, w]
        codes = self.quantize(rearrange(zc.float(), "b c h w -> b h w c"))
        indices = self.codes_to_indices(codes.detach())
        z_q = self.project_out(rearrange(codes, "b h w c -> b c h w").to(z.dtype))
        return z_q, indices, z.new_zeros((), dtype=torch.float32)

    def embed_tokens(self, indices: torch.Tensor) -> torch.Tensor:
        """int64 [b, h, w] -> float [b, h, w, d] (the decoder's input features)."""
        codes = rearrange(self.indices_to_codes(indices), "b h w c -> b c h w")
        w = self.project_out.weight if isinstance(self.project_out, nn.Conv2d) else None
        out = self.project_out(codes.to(w.dtype if w is not None else torch.float32))
        return rearrange(out, "b d h w -> b h w d")


def build_quantizer(cfg, dim: int) -> nn.Module:
    kind = str(cfg.quantizer)
    if kind == "vq":
        v = cfg.vq
        return EMAVectorQuantizer(cfg.codebook_size, dim, decay=v.decay, commitment=v.commitment,
                                  kmeans_init=v.kmeans_init, kmeans_iters=v.kmeans_iters,
                                  dead_after=v.dead_after, l2_normalize=v.l2_normalize)
    if kind == "fsq":
        q = FSQ(list(cfg.fsq.levels), dim)
        if int(cfg.codebook_size) != q.vocab_size:
            raise ValueError(f"tokenizer.codebook_size={cfg.codebook_size} but tokenizer.fsq.levels="
                             f"{list(cfg.fsq.levels)} give {q.vocab_size} codes; make them agree")
        return q
    raise ValueError(f"tokenizer.quantizer={kind!r}: expected 'vq' or 'fsq'")
