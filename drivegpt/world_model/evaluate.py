"""Held-out token metrics of a trained world model and the inputs of its other checks.

``token_metrics``: bits/token and top-1 over held-out windows (all frames, and the last frame
of each window alone) plus the disengagement predictions; ``held_out_items`` and
``real_pairs`` feed counterfactual fidelity and pose-following. The stage that runs them all
and writes the pictures and metrics.json is ``drivegpt.stages.eval_world_model``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from drivegpt.data.loaders import encoded_tokens, split_of
from drivegpt.data.poses import strided_rel_poses
from drivegpt.data.shard_reading import iter_samples
from drivegpt.world_model.losses import unpack_batch
from drivegpt.world_model.metrics import disengage_metrics, speed_baseline
from drivegpt.world_model.pose_following import motion_targets


class NoWindowsError(ValueError):
    """The loader gave no windows to score (no held-out segment long enough)."""


@torch.no_grad()
def token_metrics(model, loader, max_batches: int) -> tuple[dict, tuple]:
    """Bits/token, top-1 and disengagement predictions over held-out window batches."""
    nll = top1 = count = nll_last = top1_last = count_last = 0.0
    probs, targets, masks, speeds = [], [], [], []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        b = unpack_batch(batch)
        out = model(b["tokens"], b["rel_pose"], b["speed"])
        logits, tgt = out["logits"].float(), b["tokens"].flatten(2)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 2), tgt.flatten(), reduction="none").view_as(tgt)
        hit = (logits.argmax(-1) == tgt).float()
        if "masked" in out:  # maskgit: only the last frame is predicted, all of its tokens at once
            ce, hit = ce[:, -1:], hit[:, -1:]
        nll += float(ce.sum()); top1 += float(hit.sum()); count += ce.numel()
        nll_last += float(ce[:, -1].sum()); top1_last += float(hit[:, -1].sum()); count_last += ce[:, -1].numel()
        if b["target"] is not None:
            m = b["mask"].clone()
            m[:, 0] = 0
            probs.append(torch.sigmoid(out["disengage"].float()))
            targets.append(b["target"])
            masks.append(m)
            speeds.append(b["speed"])  # speed at each frame: the speed-only baseline's input
    if count == 0:
        raise NoWindowsError("no held-out windows (check data.shards, data.val_fraction and segment lengths)")
    res = {"bits_per_token": nll / count / math.log(2), "top1": top1 / count,
           "bits_per_token_next_frame": nll_last / count_last / math.log(2), "top1_next_frame": top1_last / count_last,
           "eval_windows_tokens": int(count)}
    dis = tuple(torch.cat(x) for x in (probs, targets, masks, speeds)) if probs else None
    return res, dis


def label_windows(loader, max_batches: int):
    """(speed [N], target [N, n_h, 3], mask [N, n_h, 3]) of frames 1.. of window batches (the
    frames the disengagement head is scored on), e.g. to fit the speed-only baseline."""
    sp, tg, mk = [], [], []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        b = unpack_batch(batch)
        if b["target"] is None:
            return None
        sp.append(b["speed"][:, 1:].reshape(-1))
        tg.append(b["target"][:, 1:].flatten(0, 1))
        mk.append(b["mask"][:, 1:].flatten(0, 1))
    return (torch.cat(sp), torch.cat(tg), torch.cat(mk)) if sp else None


def disengagement_section(probs, target, mask, speed, horizons, train_labels) -> dict:
    """Held-out disengagement metrics per horizon and cause, with the speed-only logistic
    regression (fit on ``train_labels`` = label_windows(train split)) beside each."""
    base = None
    if train_labels is not None:
        base = speed_baseline(*train_labels, speed.reshape(-1)).reshape(probs.shape)
    return disengage_metrics(probs, target, mask, horizons, baseline=base)


def held_out_items(shards: str, split: str, val_fraction: float, limit: int | None, skip_bad: bool = False):
    """Token samples of segments in ``split`` (up to ``limit``; None = all); ``skip_bad`` as data.skip_bad."""
    out = []
    for item in iter_samples(shards, frames=False, skip_bad=skip_bad):
        if isinstance(item, dict) and split_of(str(item["meta"]["segment_id"]), val_fraction) == split:
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
    return out


def real_pairs(items, tokenizer, stride: int, fps: float, max_pairs: int, seed: int):
    """Decoded real frame pairs (i, i+stride) and their motion targets."""
    rng = np.random.default_rng(seed)
    pairs = []
    for item in items:
        t = len(item["times"])
        for i in range(0, t - stride - 1, stride):
            pairs.append((item, i))
    if not pairs:
        return None
    pick = rng.choice(len(pairs), min(max_pairs, len(pairs)), replace=False)
    # each frame is decoded once: consecutive pairs share one (frame i + stride of one is frame i of the next)
    slot: dict[tuple[int, int], int] = {}
    tokens, ia, ib, y = [], [], [], []
    for j in pick:
        item, i = pairs[j]
        where = f"segment {item['meta']['segment_id']!r}"
        for f, out in ((i, ia), (i + stride, ib)):
            key = (id(item), f)
            if key not in slot:
                slot[key] = len(tokens)
                tokens.append(encoded_tokens(item["tokens"], f, where))
            out.append(slot[key])
        y.append(motion_targets(strided_rel_poses(item["rel_pose"], np.array([i]), stride)[0], fps))
    frames = np.asarray(tokenizer.decode(torch.as_tensor(np.stack(tokens), dtype=torch.long)))
    return frames[ia], frames[ib], np.stack(y)
