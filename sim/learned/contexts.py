"""Start states: real logged context windows from the held-out split of token shards.

A window keeps K frames of a segment at ``stride`` (plus ``future`` more for rollouts, so the
logged continuation can be shown and replayed). ``rel_pose[k]`` is the SE(3) composition of the
``stride`` per-frame poses from kept frame k to k+1, ``speed[k]`` the speed at kept frame k.
Only segments with ``data.loaders.split_of(segment_id, val_fraction) == "val"`` are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from einops import rearrange

from sim.learned.geometry import compose


@dataclass
class ContextPool:
    tokens: torch.Tensor    # int64 [n, K+F, h, w]
    rel_pose: torch.Tensor  # float32 [n, K+F, 6]
    speed: torch.Tensor     # float32 [n, K+F]
    segment_ids: list[str]
    starts: list[int]
    context_frames: int     # K (the rest is the logged future)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def future_frames(self) -> int:
        return int(self.tokens.shape[1]) - self.context_frames

    def to(self, device) -> "ContextPool":
        return ContextPool(self.tokens.to(device), self.rel_pose.to(device), self.speed.to(device),
                           self.segment_ids, self.starts, self.context_frames)


def _get(sample: Any, key: str):
    if isinstance(sample, dict):
        return sample[key]
    return getattr(sample, key)


def _segment_id(sample: Any) -> str:
    meta = _get(sample, "meta")
    return str(meta["segment_id"])


def stride_poses(rel_pose: np.ndarray, stride: int) -> torch.Tensor:
    """Per-frame poses [T, 6] -> kept-frame poses [T // stride, 6] (composed over each stride)."""
    n = rel_pose.shape[0] // stride
    p = rearrange(torch.as_tensor(rel_pose[: n * stride], dtype=torch.float64),
                  "(n s) d -> n s d", s=stride)
    out = p[:, 0]
    for j in range(1, stride):
        out = compose(out, p[:, j])
    return out.float()


def windows_of(sample: Any, K: int, stride: int, future: int = 0, max_windows: int | None = None):
    """Yield window dicts from one token sample; windows start on engaged frames, step K kept frames."""
    tokens = np.asarray(_get(sample, "tokens"))
    engaged = np.asarray(_get(sample, "engaged")).astype(bool)
    speed = np.asarray(_get(sample, "speed"), dtype=np.float32)
    rel = np.asarray(_get(sample, "rel_pose"), dtype=np.float32)
    n_keep = K + future
    T = tokens.shape[0]
    count = 0
    for start in range(0, T - (n_keep - 1) * stride - stride + 1, K * stride):
        idx = start + stride * np.arange(n_keep)
        if not engaged[idx[:K]].all():
            continue
        yield dict(tokens=torch.as_tensor(tokens[idx].astype(np.int64)),
                   rel_pose=stride_poses(rel[start:start + n_keep * stride], stride),
                   speed=torch.as_tensor(speed[idx]), segment_id=_segment_id(sample), start=start)
        count += 1
        if max_windows is not None and count >= max_windows:
            return


def pool_from_samples(samples: Iterable[Any], K: int, stride: int, split_fn: Callable[[str], str],
                      future: int = 0, max_contexts: int = 256, per_segment: int = 4,
                      grid: tuple[int, int] | None = None, vocab_size: int | None = None,
                      where: str = "<samples>") -> ContextPool:
    """Collect held-out windows (``split_fn(segment_id) == "val"``) into a ContextPool."""
    wins = []
    for sample in samples:
        sid = _segment_id(sample)
        if split_fn(sid) != "val":
            continue
        toks = np.asarray(_get(sample, "tokens"))
        if grid is not None and tuple(toks.shape[1:]) != tuple(grid):
            raise ValueError(f"{where}: segment {sid!r}, field 'tokens': grid {tuple(toks.shape[1:])} "
                             f"!= the world model's {tuple(grid)} (shards from another tokenizer?)")
        if vocab_size is not None and toks.size and int(toks.max()) >= vocab_size:
            raise ValueError(f"{where}: segment {sid!r}, field 'tokens': code {int(toks.max())} "
                             f">= the world model's vocab_size {vocab_size}")
        wins.extend(windows_of(sample, K, stride, future, per_segment))
        if len(wins) >= max_contexts:
            wins = wins[:max_contexts]
            break
    if not wins:
        raise ValueError(f"{where}: no held-out (val) context window of {K}+{future} frames at stride "
                         f"{stride}; need segments in the val split that are long enough")
    return ContextPool(
        tokens=torch.stack([w["tokens"] for w in wins]),
        rel_pose=torch.stack([w["rel_pose"] for w in wins]),
        speed=torch.stack([w["speed"] for w in wins]),
        segment_ids=[w["segment_id"] for w in wins], starts=[w["start"] for w in wins],
        context_frames=K)


def pool_from_shards(spec: str, K: int, stride: int, val_fraction: float, future: int = 0,
                     max_contexts: int = 256, grid=None, vocab_size=None) -> ContextPool:
    """Held-out start contexts from token shards (``data.shards`` / ``data.loaders``)."""
    from data.loaders import split_of
    from data.shards import expand_urls, iter_samples

    urls = expand_urls(spec)
    return pool_from_samples(iter_samples(urls), K, stride,
                             lambda sid: split_of(sid, val_fraction), future=future,
                             max_contexts=max_contexts, grid=grid, vocab_size=vocab_size,
                             where=f"data.shards={spec}")
