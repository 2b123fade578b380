"""Webdataset pipelines over fleet-log shards: random single frames and strided windows.

Both pipelines: shard list (``resampled=True``: endless random shards per worker, epoch length
set with ``with_epoch`` on the WebLoader; otherwise every shard once, split over ranks with
``wds.split_by_node`` and over DataLoader workers with ``wds.split_by_worker``; ``even=True``
for evaluation on several ranks: every shard on every rank, then ``even_split``) -> tar
samples -> held-out split filter by segment (``split_of``) -> decode -> frames / windows ->
shuffle buffer. Bad samples raise ``ShardError`` naming the file and key, or with
``skip_bad=True`` are logged, counted and skipped.

Windows read 20 Hz logs at a ``stride``: kept frames i_k = start + k*stride (k < K), and

- ``rel_pose[k]`` = SE(3) composition of the per-frame relative poses i_k .. i_k+stride-1,
  i.e. frame i_{k+1} in the ego frame at i_k (so rel_pose[K-1] leads to the frame after
  the window, which must exist in the log);
- ``cause[k]`` = cause code of the first disengagement at a frame in (i_k, i_k+stride]
  (a disengagement on a skipped frame belongs to the interval it falls in);
- ``targets``/``mask`` [K, H, 3] = the native-rate labels (data.labels) at the kept frames,
  which count events on skipped frames too;
- ``speed_ahead`` [K, H] = the logged speed each of the same horizons after the kept frame (the
  first frame at or after it; NaN past the log's end): where the driver was going, for BC's
  desired-speed target (``rl.bc.accel_horizon_s``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import weakref
from typing import Iterable, Iterator, Sequence

import numpy as np

from drivegpt.data.labels import DEFAULT_HORIZONS, disengagement_targets
from drivegpt.data.poses import strided_rel_poses
from drivegpt.data.shards import ShardError
from drivegpt.data.shard_reading import BadInput, decode_sample, expand_urls, tar_samples
from drivegpt.frameops import resize

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "all")


def split_of(segment_id: str, val_fraction: float) -> str:
    """THE held-out split: "val" for a deterministic, hashed ``val_fraction`` of segment ids."""
    h = int.from_bytes(hashlib.sha256(str(segment_id).encode()).digest()[:8], "big") / 2.0 ** 64
    return "val" if h < val_fraction else "train"


def _keep(split: str, val_fraction: float):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return lambda sample: split == "all" or split_of(sample["__key__"], val_fraction) == split


def _worker_rng(seed: int, counter) -> np.random.Generator:
    import webdataset as wds

    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return np.random.default_rng([seed, rank, worker, next(counter)])


def even_split(src: Iterable[dict]) -> Iterator[dict]:
    """Every rank x DataLoader worker gets the same number of items, each item exactly once.

    A pipeline stage for evaluation sets: every slot (rank r of R, worker w of W: slot r*W + w)
    reads the whole stream, keeps items i with i % (R*W) == slot and, when the stream ends, pads
    up to ceil(N / (R*W)) items with copies of a real item. Every item carries ``valid`` (False
    on the padding), which metrics must use to leave the padding out. Equal counts mean equal
    batch counts on every rank, so no collective in the evaluation loop can be left unmatched;
    the items, their order within a slot and the held-out split do not depend on how the
    shards are laid out. With no item at all every slot yields nothing (also equal)."""
    import webdataset as wds

    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    slots, slot = world * workers, rank * workers + worker
    n = kept = 0
    template = None
    for item in src:
        if template is None:
            template = item
        if n % slots == slot:
            kept += 1
            yield dict(item, valid=True)
        n += 1
    for _ in range(-(-n // slots) - kept):
        yield dict(template, valid=False)


def _segment_rng(seed: int, segment_id: str) -> np.random.Generator:
    """The random choices of an evaluation split depend on the segment only (not on the rank)."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(str(segment_id).encode()).digest()[:8], "big")])


def shard_pipeline(urls, split: str = "train", val_fraction: float = 0.1, resampled: bool = False,
                   shuffle_shards: bool = True, seed: int = 0, skip_bad: bool = False,
                   stats: dict | None = None, even: bool = False) -> tuple[list, BadInput]:
    """The common head of the pipelines: shard source, node/worker split, tar samples, split
    filter. ``even=True`` (evaluation under several ranks): every rank and worker reads every
    shard, and the pipeline ends in ``even_split`` (added by the caller after the items)."""
    import webdataset as wds

    urls = expand_urls(urls)
    handler = BadInput(skip_bad, stats)
    if resampled:
        # deterministic: a distinct, reproducible shard sequence per rank and worker
        stages = [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    elif even:
        stages = [wds.SimpleShardList(urls)]
    else:
        _, world, _, _ = wds.utils.pytorch_worker_info()
        if world > len(urls) and split != "val":
            raise ValueError(f"{len(urls)} shard(s) for {world} ranks: every rank needs at least one "
                             "shard (DDP hangs otherwise); write smaller shards (data.shard_maxcount) "
                             "or use data.resampled=true with data.epoch_samples")
        stages = [wds.SimpleShardList(urls)]
        if shuffle_shards:  # same permutation on every rank and worker (seed + epoch), then split
            stages.append(wds.detshuffle(len(urls), initial=len(urls), seed=seed))
        stages += [wds.split_by_node, wds.split_by_worker]
    stages += [tar_samples(handler), wds.select(_keep(split, val_fraction))]
    return stages, handler


def _decoded(src, handler: BadInput, **kw):
    for sample in src:
        try:
            yield decode_sample(sample, **kw)
        except ShardError as e:
            handler(e)  # raises unless skip_bad
    if handler.stats["skipped"]:
        log.warning("this worker skipped %d bad samples/shards", handler.stats["skipped"])


def frame_dataset(urls, split: str = "train", val_fraction: float = 0.1, shuffle_buffer: int = 1000,
                  resampled: bool = False, frames_per_segment: int | None = None,
                  size: Sequence[int] | None = None, skip_bad: bool = False, seed: int = 0,
                  stats: dict | None = None, even: bool = False):
    """Random single frames: {"frame": uint8 [H,W,3], "lane_mask": bool [H,W] (when the
    source has it), "segment_id": str, "index": int}. ``frames_per_segment``: a random subset
    of each segment's frames (all when None; outside training the subset depends on the
    segment only); ``size``: (H, W) to resize to. ``even``: see ``even_split``."""
    import webdataset as wds

    stages, handler = shard_pipeline(urls, split, val_fraction, resampled, shuffle_buffer > 0,
                                     seed, skip_bad, stats, even)
    counter = itertools.count()

    def frames(src) -> Iterator[dict]:
        rng = _worker_rng(seed, counter)
        for seg in _decoded(src, handler):
            t = len(seg)
            idx = np.arange(t)
            if frames_per_segment is not None and frames_per_segment < t:
                r = rng if split == "train" else _segment_rng(seed, seg.segment_id)
                idx = np.sort(r.choice(t, frames_per_segment, replace=False))
            fr = seg.frames[idx]  # [n, H, W, 3] uint8
            lane = seg.extras.get("lane_mask")
            lane = None if lane is None else lane[idx]
            if size is not None:
                fr = resize(fr, size)  # INTER_AREA
                lane = None if lane is None else resize(lane, size)  # bool mask: nearest
            for j, i in enumerate(idx):
                out = {"frame": fr[j], "segment_id": seg.segment_id, "index": int(i)}
                if lane is not None:
                    out["lane_mask"] = lane[j]
                yield out

    stages.append(frames)
    if even:
        stages.append(even_split)
    if shuffle_buffer > 0:
        stages.append(wds.detshuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed))
    return wds.DataPipeline(*stages)


NOT_ENCODED = -1  # token value of a frame the tokenize stage skipped (tokenize.every)


def cruise_speed_of(meta: dict) -> float:
    """The segment's cruise set speed (``meta.cruise_speed``, m/s; data.schema), NaN when the
    source did not log one."""
    c = meta.get("cruise_speed") if isinstance(meta, dict) else None
    return float(c) if c is not None else float("nan")


def encoded_tokens(tokens: np.ndarray, idx, where: str) -> np.ndarray:
    """``tokens[idx]`` as int64, refusing frames the tokenize stage did not encode."""
    out = np.asarray(tokens)[idx].astype(np.int64)
    if (out < 0).any():
        bad = [int(i) for i in np.atleast_1d(idx) if (np.asarray(tokens)[i] < 0).any()]
        raise ValueError(f"{where}: field 'tokens': frame(s) {bad[:5]} were not encoded (token shards "
                         f"written with tokenize.every > 1 hold only every N-th frame); read them at a stride "
                         f"that is a multiple of N from frame 0, or re-tokenize with tokenize.every=1")
    return out


def window_starts(t: int, context_frames: int, stride: int, step: int | None = None,
                  next_frame: bool = True) -> np.ndarray:
    """Window start frames whose K kept frames (and, with ``next_frame``, the frame after them:
    training windows predict it) lie in a T-frame log; every ``step`` frames (default: stride)."""
    last = t - 1 - (context_frames if next_frame else context_frames - 1) * stride
    return np.arange(0, last + 1, step or stride) if last >= 0 else np.zeros(0, np.int64)


def window_frames(start: int, context_frames: int, stride: int) -> np.ndarray:
    """The kept frame indices of a window: start + k * stride, k < K (oldest first)."""
    return start + stride * np.arange(context_frames)


def segment_windows(item, context_frames: int, stride: int, key: str = "frames",
                    horizons: Sequence[float] = DEFAULT_HORIZONS, starts: Sequence[int] | None = None,
                    size: Sequence[int] | None = None) -> Iterator[dict]:
    """Windows of one decoded Segment (key="frames") or token dict (key="tokens")."""
    is_seg = not isinstance(item, dict)
    get = (lambda k: getattr(item, k)) if is_seg else item.__getitem__
    meta = item.meta if is_seg else item["meta"]
    rel, speed, engaged, dis, times = (get(k) for k in ("rel_pose", "speed", "engaged", "disengage", "times"))
    k_, t = context_frames, len(times)
    if starts is None:
        starts = window_starts(t, k_, stride)
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) == 0:
        return
    if starts.min() < 0 or starts.max() + k_ * stride > t - 1:
        raise ValueError(f"segment {meta.get('segment_id')!r}: window start out of range for {t} frames")
    targets, mask = disengagement_targets(dis, engaged, times, horizons)  # [T,H,3] at native rate
    if key == "frames":
        data = item.frames
        if size is not None:
            data = resize(data, size)
    elif key == "tokens":
        if is_seg or "tokens" not in item:
            raise ValueError(f"segment {meta.get('segment_id')!r}: key='tokens' needs token shards")
        data = item["tokens"]
    else:
        raise ValueError(f"key must be 'frames' or 'tokens', got {key!r}")
    # per-native-frame: composed pose over the next `stride` frames, cause in (i, i+stride]
    kept_all = np.arange(0, t - stride)
    composed = np.zeros((t, 6), np.float64)
    composed[kept_all] = strided_rel_poses(rel, kept_all, stride)
    cruise = cruise_speed_of(meta)
    # the speed h seconds after each frame (the first frame at or after t + h; NaN past the log's end)
    hz = np.asarray(horizons, dtype=np.float64)
    ahead = np.searchsorted(times, times[:, None] + hz[None, :] - 1e-9, side="left")  # [T, H]
    speed_ahead = np.where(ahead < t, speed[np.minimum(ahead, t - 1)], np.nan).astype(np.float32)
    nxt = np.stack([np.pad(dis[j + 1:], (0, j + 1)) for j in range(stride)], axis=1)  # [T, stride]
    first = np.argmax(nxt != 0, axis=1)
    cause = nxt[np.arange(t), first].astype(np.int64)
    for s in starts:
        idx = window_frames(s, k_, stride)  # kept frames
        yield {
            # frames uint8 [K,H,W,3] | tokens int64 [K,h,w]
            key: data[idx] if key == "frames" else encoded_tokens(data, idx, f"segment {meta.get('segment_id')!r}"),
            "rel_pose": composed[idx].astype(np.float32),  # [K, 6]
            "speed": speed[idx].astype(np.float32),  # [K]
            "speed_ahead": speed_ahead[idx],  # [K, H] the speed each horizon later (NaN: past the log)
            "cruise_speed": np.full(len(idx), cruise, np.float32),  # [K] set speed, NaN = not logged
            "engaged": engaged[idx].astype(bool),  # [K]
            "cause": cause[idx],  # [K] int64
            "targets": targets[idx],  # [K, H, 3] float32
            "mask": mask[idx],  # [K, H, 3] bool
            "times": times[idx].astype(np.float64),  # [K]
            "segment_id": str(meta["segment_id"]),
            "start": int(s),
        }


def window_dataset(urls, context_frames: int, stride: int, key: str = "frames",
                   horizons: Sequence[float] = DEFAULT_HORIZONS, split: str = "train",
                   val_fraction: float = 0.1, shuffle_buffer: int = 1000, resampled: bool = False,
                   window_step: int | None = None, windows_per_segment: int | None = None,
                   size: Sequence[int] | None = None, skip_bad: bool = False, seed: int = 0,
                   stats: dict | None = None, even: bool = False):
    """Windows of K kept frames at ``stride`` (see the module docstring for the fields).

    Starts every ``window_step`` frames (default: stride); ``windows_per_segment``: a random
    subset of those per segment (outside training it depends on the segment only).
    ``key="tokens"`` reads token shards (never decodes video). ``even``: see ``even_split``.
    """
    import webdataset as wds

    if key not in ("frames", "tokens"):
        raise ValueError(f"key must be 'frames' or 'tokens', got {key!r}")
    stages, handler = shard_pipeline(urls, split, val_fraction, resampled, shuffle_buffer > 0,
                                     seed, skip_bad, stats, even)
    counter = itertools.count()

    def windows(src) -> Iterator[dict]:
        rng = _worker_rng(seed, counter)
        for item in _decoded(src, handler, frames=(key == "frames")):
            t = len(item["times"] if isinstance(item, dict) else item.times)
            starts = window_starts(t, context_frames, stride, window_step)
            if windows_per_segment is not None and windows_per_segment < len(starts):
                sid = item["meta"]["segment_id"] if isinstance(item, dict) else item.segment_id
                r = rng if split == "train" else _segment_rng(seed, sid)
                starts = np.sort(r.choice(starts, windows_per_segment, replace=False))
            try:
                yield from segment_windows(item, context_frames, stride, key, horizons, starts, size)
            except ValueError as e:
                handler(ShardError(f"{e}"))

    stages.append(windows)
    if even:
        stages.append(even_split)
    if shuffle_buffer > 0:
        stages.append(wds.detshuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed))
    return wds.DataPipeline(*stages)


_LOADERS: weakref.WeakSet = weakref.WeakSet()  # the torch DataLoaders inside make_loader's WebLoaders


def make_loader(dataset, batch_size: int, num_workers: int = 0, epoch_samples: int | None = None):
    """A WebLoader batching ``dataset``; ``epoch_samples`` (per rank) sets the epoch length of
    a resampled (endless) dataset via ``with_epoch`` on the loader (counted in batches). Its
    persistent workers end with ``shutdown_workers()``."""
    import webdataset as wds

    loader = wds.WebLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                           persistent_workers=num_workers > 0)
    _LOADERS.add(loader.pipeline[0])
    if epoch_samples:
        loader = loader.with_epoch(nbatches=max(1, int(epoch_samples) // batch_size))
    return loader


def shutdown_workers(loaders=None) -> int:
    """End the persistent worker processes of ``loaders`` (WebLoaders from ``make_loader``; None:
    every live one) now; returns how many iterators were shut down. A loader iterated again
    starts new workers. Lightning does this at the end of a fit for a
    torch DataLoader, but it cannot see the one inside a WebLoader, so the workers lived on until
    garbage collection ran the iterator's ``__del__`` at some later moment; there, in the
    pipeline, each worker's join waited out its 5 s timeout (~20 s lost before the stage after
    the tokenizer's training). ``FleetDataModule.teardown`` and the pipeline (after every stage)
    call this."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    n = 0
    chosen = list(_LOADERS) if loaders is None else [getattr(x, "pipeline", [x])[0] for x in loaders]
    for dl in chosen:
        it = getattr(dl, "_iterator", None)
        if isinstance(it, _MultiProcessingDataLoaderIter):
            it._shutdown_workers()
            n += 1
        if it is not None:
            dl._iterator = None
    return n
