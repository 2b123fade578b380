"""The contract every trainable component keeps (ground floor).

Each model -- the tokenizer, the world model, the policy -- exposes

    loss, parts = model.compute_loss(batch, **settings)

(IRIS style): ``loss`` is the scalar to minimise, ``parts`` names its terms (detached or not)
for logging. The Lightning modules (``TokenizerModule``, ``WorldModelModule``, ``BCModule``)
are thin: they prepare the batch, call ``compute_loss``, step the optimisers and log ``parts``.
A caller that needs the forward outputs as well passes a dict as ``outputs`` and
``compute_loss`` fills it.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch

LossParts = dict[str, torch.Tensor]


@runtime_checkable
class Trainable(Protocol):
    def compute_loss(self, batch: Any, **settings: Any) -> tuple[torch.Tensor, LossParts]: ...


# --------------------------------------------------------------------------- learning-rate schedule
def cosine_lr(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The lr multiplier at optimiser step ``step``: linear warm-up over ``warmup`` steps, then a
    cosine from 1 down to ``min_ratio`` at step ``total`` (held there after it; 1.0 = constant)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


# --------------------------------------------------------------------------- evaluation over ranks
def valid_rows(batch: Any, n: int, device=None) -> torch.Tensor:
    """bool [n]: the rows of an evaluation batch that are real samples. On several ranks the
    evaluation loaders pad every rank to the same count (``drivegpt.data.loaders.even_split``)
    and flag the copies ``valid=False``; without the flag every row is real."""
    v = batch.get("valid") if isinstance(batch, dict) else None
    if v is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.as_tensor(v, device=device).reshape(-1).bool()


def take_rows(batch: dict, keep: torch.Tensor) -> dict:
    """The rows ``keep`` (bool [b]) of a collated batch (tensors and lists alike)."""
    idx = torch.nonzero(keep.cpu()).flatten()
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == keep.shape[0]:
            out[k] = v[idx.to(v.device)]
        elif isinstance(v, (list, tuple)) and len(v) == keep.shape[0]:
            out[k] = [v[i] for i in idx.tolist()]
        else:
            out[k] = v
    return out


class EvalSums:
    """Named sums over an evaluation epoch, added up over every rank: metrics of the whole
    held-out set (a pooled mean is sum / count), the same on any number of ranks.

        sums.reset(); sums.add(psnr_sum=..., frames=...)         # per batch
        total = sums.reduce(module)                              # at epoch end, on every rank

    ``reduce`` is one all-reduce through the module's Lightning strategy (every rank must call
    it once per epoch, which Lightning's epoch-end hooks do)."""

    def __init__(self, names: tuple[str, ...]):
        self.names = tuple(names)
        self.reset()

    def reset(self) -> None:
        self.values = torch.zeros(len(self.names), dtype=torch.float64)

    def add(self, **parts) -> None:
        for k, v in parts.items():
            self.values[self.names.index(k)] += float(torch.as_tensor(v).detach().double().sum())

    def reduce(self, module) -> dict[str, float]:
        t = self.values.to(module.device)
        trainer = getattr(module, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            t = trainer.strategy.reduce(t, reduce_op="sum")
        return dict(zip(self.names, t.cpu().tolist()))


def gather_rows(module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate every rank's rows of ``tensors`` (same trailing shapes, any row count per
    rank) on every rank, with Lightning's ``all_gather`` (two collectives, on every rank)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size <= 1:
        return tensors
    n = torch.tensor([tensors[0].shape[0]], device=module.device)
    counts = module.all_gather(n).reshape(-1).tolist()
    most = max(counts)
    out = []
    for x in tensors:
        pad = x.new_zeros((most - x.shape[0], *x.shape[1:]))
        g = module.all_gather(torch.cat([x.to(module.device), pad]))  # [world, most, ...]
        out.append(torch.cat([g[r, :c] for r, c in enumerate(counts)]).cpu())
    return tuple(out)
