"""The world model's batch format and loss terms (used by ``WorldModel.compute_loss``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)
TARGET_KEYS = ("disengage", "disengage_targets", "targets")
MASK_KEYS = ("disengage_mask", "targets_mask", "mask")


def unpack_batch(batch: dict) -> dict[str, torch.Tensor | None]:
    """Window batch (data.loaders.window_dataset(key="tokens")) -> model inputs and labels.

    tokens [b,K,h,w] -> int64; rel_pose [b,K,6], speed [b,K] -> float32; disengagement targets
    [b,K,n_h,3] and mask (any of [b,K], [b,K,n_h], [b,K,n_h,3]; absent = all valid) -> float32.
    """
    for key in ("tokens", "rel_pose", "speed"):
        if key not in batch:
            raise KeyError(f"world-model batch has no {key!r} (keys: {sorted(batch)})")
    out = {
        "tokens": batch["tokens"].long(),
        "rel_pose": batch["rel_pose"].float(),
        "speed": batch["speed"].float(),
        "target": None,
        "mask": None,
    }
    tkey = next((k for k in TARGET_KEYS if k in batch and torch.is_tensor(batch[k]) and batch[k].ndim == 4), None)
    if tkey is not None:
        out["target"] = batch[tkey].float()
        mkey = next((k for k in MASK_KEYS if k in batch and torch.is_tensor(batch[k])), None)
        mask = torch.ones_like(out["target"]) if mkey is None else batch[mkey].float()
        while mask.ndim < 4:
            mask = mask[..., None]
        out["mask"] = mask.expand_as(out["target"]).clone()
    return out


def balanced_bce(logits, target, mask, pos_rate, eps: float = 1e-3):
    """Class-balanced BCE: positives weighted 0.5/p, negatives 0.5/(1-p) per (horizon, cause).

    logits/target/mask [b,K,n_h,c]; pos_rate [n_h,c] (running positive rate). Masked entries
    (censored, not engaged, frame 0) contribute nothing; the mean weight is ~1.
    """
    p = pos_rate.clamp(eps, 1 - eps)
    w = torch.where(target > 0.5, 0.5 / p, 0.5 / (1 - p)) * mask
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (loss * w).sum() / mask.sum().clamp_min(1.0)
