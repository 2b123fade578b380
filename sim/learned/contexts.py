"""Start states: real logged context windows from the held-out split of token shards.

A window keeps K frames of a segment at ``stride`` (plus ``future`` more for rollouts, so the
logged continuation can be shown and replayed). ``rel_pose[k]`` is the SE(3) composition of the
``stride`` per-frame poses from kept frame k to k+1, ``speed[k]`` the speed at kept frame k
(``data.loaders.segment_windows`` composes them, as for the world model's training windows).
Only segments with ``data.loaders.split_of(segment_id, val_fraction) == "val"`` are used.

Handback windows (``handbacks`` per segment, ``ContextPool.handback``): the K frames up to and
including the first engaged frame after each takeover (the safety driver handing the car back),
so the earlier context frames are the human's. A fleet logs few of them (its drivers are rarely
taken over), while a cloned policy meets them after every takeover it causes: in the ground
truth its GAS takeovers ("too slow") come right after a handback at a low speed (README
"Policy", *Speed recovery*). ``LearnedSimConfig.handback_fraction`` starts that share of the
sim's episodes from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from drivegpt.data.loaders import segment_windows, split_of, window_starts
from drivegpt.data.shard_reading import expand_urls, iter_samples


@dataclass
class ContextPool:
    tokens: torch.Tensor    # int64 [n, K+F, h, w]
    rel_pose: torch.Tensor  # float32 [n, K+F, 6]
    speed: torch.Tensor     # float32 [n, K+F]
    segment_ids: list[str]
    starts: list[int]
    context_frames: int     # K (the rest is the logged future)
    cruise: torch.Tensor | None = None  # float32 [n] the segment's cruise set speed, m/s (NaN: not logged)
    handback: torch.Tensor | None = None  # bool [n] the window ends at a handback (None: none does)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def future_frames(self) -> int:
        return int(self.tokens.shape[1]) - self.context_frames

    def to(self, device) -> "ContextPool":
        return ContextPool(self.tokens.to(device), self.rel_pose.to(device), self.speed.to(device),
                           self.segment_ids, self.starts, self.context_frames,
                           None if self.cruise is None else self.cruise.to(device),
                           None if self.handback is None else self.handback.to(device))

    def subset(self, idx) -> "ContextPool":
        """The windows at positions ``idx`` (a list of ints), every field kept."""
        t = torch.as_tensor(list(idx), dtype=torch.long, device=self.tokens.device)
        return ContextPool(self.tokens[t], self.rel_pose[t], self.speed[t],
                           [self.segment_ids[i] for i in idx], [self.starts[i] for i in idx], self.context_frames,
                           None if self.cruise is None else self.cruise[t],
                           None if self.handback is None else self.handback[t])

    def handback_indices(self) -> torch.Tensor:
        """Positions [m] of the handback windows (empty when there are none)."""
        if self.handback is None:
            return torch.zeros(0, dtype=torch.long, device=self.tokens.device)
        return self.handback.nonzero().flatten()

    def cruise_at(self, idx: torch.Tensor) -> torch.Tensor:
        """Cruise set speeds [len(idx)] of these contexts, 0 where unknown (the observation's code)."""
        if self.cruise is None:
            return torch.zeros(len(idx), device=self.tokens.device)
        c = self.cruise[idx]
        return torch.where(torch.isfinite(c), c, torch.zeros_like(c))


def _get(sample: Any, key: str):
    if isinstance(sample, dict):
        return sample[key]
    return getattr(sample, key)


def _segment_id(sample: Any) -> str:
    meta = _get(sample, "meta")
    return str(meta["segment_id"])


def handback_starts(engaged, K: int, stride: int, n_keep: int) -> list[int]:
    """Window starts (native frames) whose K-th kept frame is the first frame on the stride grid
    (multiples of ``stride`` from frame 0, the frames token shards written with
    ``tokenize.every = stride`` hold) at or after a handback (``engaged`` [T] going 0 -> 1), if
    the car is still engaged there; windows of ``n_keep`` kept frames that fit."""
    e = np.asarray(engaged).astype(bool)
    back = np.flatnonzero(e[1:] & ~e[:-1]) + 1  # first engaged frame after a disengaged stretch
    last = -(-back // stride) * stride  # rounded up to the stride grid
    starts = [int(x) - (K - 1) * stride for x in last if x < len(e) and e[x]]
    return [s for s in starts if s >= 0 and s + n_keep * stride <= len(e) - 1]  # segment_windows' range


def _window(w: dict, K: int, handback: bool) -> dict:
    return dict(tokens=torch.as_tensor(w["tokens"], dtype=torch.int64),
                rel_pose=torch.as_tensor(w["rel_pose"], dtype=torch.float32),
                speed=torch.as_tensor(w["speed"], dtype=torch.float32),
                cruise=float(w["cruise_speed"][K - 1]),
                segment_id=w["segment_id"], start=w["start"], handback=handback)


def windows_of(sample: Any, K: int, stride: int, future: int = 0, max_windows: int | None = None,
               handbacks: int = 0):
    """Window dicts of one token sample (``data.loaders.segment_windows``: composed strided poses),
    starting every K kept frames, kept only where the car is engaged over the K context frames;
    then up to ``handbacks`` handback windows (``handback_starts``: only the last context frame
    need be engaged), each dict with ``handback`` True."""

    n_keep = K + future
    t = len(np.asarray(_get(sample, "times")))
    starts = window_starts(t, n_keep, stride, step=K * stride)
    count = 0
    for w in segment_windows(sample, n_keep, stride, key="tokens", starts=starts):
        if not w["engaged"][:K].all():
            continue
        yield _window(w, K, False)
        count += 1
        if max_windows is not None and count >= max_windows:
            break
    if handbacks > 0:
        back = handback_starts(_get(sample, "engaged"), K, stride, n_keep)[:handbacks]
        if back:
            for w in segment_windows(sample, n_keep, stride, key="tokens", starts=back):
                yield _window(w, K, True)


def pool_from_samples(samples: Iterable[Any], K: int, stride: int, split_fn: Callable[[str], str],
                      future: int = 0, max_contexts: int = 256, per_segment: int = 4,
                      grid: tuple[int, int] | None = None, vocab_size: int | None = None,
                      where: str = "<samples>", handbacks: int = 0) -> ContextPool:
    """Collect held-out windows (``split_fn(segment_id) == "val"``) into a ContextPool: up to
    ``per_segment`` engaged windows and ``handbacks`` handback windows of each segment, at most
    ``max_contexts`` engaged windows in all (the handback windows of those segments come on top)."""
    wins, n_plain = [], 0
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
        seg = list(windows_of(sample, K, stride, future, per_segment, handbacks))
        plain = [w for w in seg if not w["handback"]][:max_contexts - n_plain]
        wins.extend(plain + [w for w in seg if w["handback"]])
        n_plain += len(plain)
        if n_plain >= max_contexts:
            break
    if not wins:
        raise ValueError(f"{where}: no held-out (val) context window of {K}+{future} frames at stride "
                         f"{stride}; need segments in the val split that are long enough")
    return ContextPool(
        tokens=torch.stack([w["tokens"] for w in wins]),
        rel_pose=torch.stack([w["rel_pose"] for w in wins]),
        speed=torch.stack([w["speed"] for w in wins]),
        segment_ids=[w["segment_id"] for w in wins], starts=[w["start"] for w in wins],
        context_frames=K, cruise=torch.tensor([w["cruise"] for w in wins], dtype=torch.float32),
        handback=torch.tensor([w["handback"] for w in wins], dtype=torch.bool) if handbacks > 0 else None)


def pool_from_shards(spec: str, K: int, stride: int, val_fraction: float, future: int = 0,
                     max_contexts: int = 256, grid=None, vocab_size=None, skip_bad: bool = False,
                     handbacks: int = 0) -> ContextPool:
    """Held-out start contexts from token shards (``data.shards`` / ``data.loaders``)."""
    urls = expand_urls(spec)
    return pool_from_samples(iter_samples(urls, skip_bad=skip_bad), K, stride,
                             lambda sid: split_of(sid, val_fraction), future=future,
                             max_contexts=max_contexts, grid=grid, vocab_size=vocab_size,
                             where=f"data.shards={spec}", handbacks=handbacks)
