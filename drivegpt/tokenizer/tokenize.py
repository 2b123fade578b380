"""Encoding frame shards into token shards with ``trainer.predict`` (``drivegpt tokenize``,
stage ``drivegpt.stages.tokenize``).

Work unit = one input frame shard. Rank r of W takes input shards r, r+W, ... (no duplicates;
a rank with one shard fewer gets a no-op step, so every rank runs ceil(n / W) steps) and
writes ``out/<input shard stem>/tokens-000000.tar`` (+ that directory's manifest.json) with
data.shards.write_shards: atomic, and a re-run skips every part whose manifest says it is
complete (so a killed job resumes, on any number of ranks). Each token
sample holds ``tokens`` int16 [T, h', w'], every label/pose array and extra of the segment
unchanged (bit-exact), and ``meta`` with ``meta["tokens"] = {vocab_size, grid, frame_size,
tokenizer, every}``. ``every`` = N encodes frames 0, N, 2N, ... only (the frames a world model
reading the log at stride N sees) and fills the others with ``NOT_ENCODED`` (-1), so the arrays
keep the log's 20 Hz length and a reader that asks for a skipped frame gets a clear error
(``drivegpt.data.loaders.encoded_tokens``) instead of a wrong token. Rank 0 then writes ``out/manifest.json`` listing every part; read the token
shards with ``data.shards=<out>/*/*.tar``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import numpy as np
import torch

from drivegpt.data.loaders import NOT_ENCODED
from drivegpt.data.shards import write_shards
from drivegpt.data.shard_reading import TOKEN_FORMAT, iter_samples
from drivegpt.frameops import resize
from drivegpt.runs import atomic_write_json, read_json
from drivegpt.tokenizer.model import Tokenizer

MANIFEST = "manifest.json"
SKIPPED = "skipped.json"  # per part: bad input samples left out under data.skip_bad


class EmptyShardError(ValueError):
    """An input shard holds no segments."""


def part_name(url: str) -> str:
    """Output directory name for an input shard URL (its file stem, no dots)."""
    stem = Path(str(url).split("::")[0]).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem.replace(".", "_") or "shard"


def resize_frames(frames: np.ndarray, size: tuple[int, int], allow: bool, where: str) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, h, w, 3] (``drivegpt.frameops.resize``, as the frame loader does);
    ``allow=False`` (data.resize=false) refuses frames of another size."""
    h, w = size
    if frames.shape[1:3] != (h, w) and not allow:
        raise ValueError(f"{where}: frames are {frames.shape[1]}x{frames.shape[2]} but the tokenizer "
                         f"takes {h}x{w} (set data.resize=true to resize)")
    return resize(frames, size)


@torch.no_grad()
def encode_segment(model: Tokenizer, frames: np.ndarray, batch_size: int, every: int = 1,
                   prepare=None) -> np.ndarray:
    """uint8 [T, H, W, 3] -> int16 [T, h', w'] in chunks of ``batch_size`` frames; with
    ``every`` = N only frames 0, N, 2N, ... are encoded, the others hold ``NOT_ENCODED``.
    ``prepare`` (e.g. the resize to the tokenizer's input) runs on the encoded frames only."""
    if every < 1:
        raise ValueError(f"tokenize.every must be >= 1, got {every}")
    kept = frames[::every]
    if prepare is not None:
        kept = prepare(kept)
    out = [model.encode(torch.from_numpy(np.ascontiguousarray(kept[i:i + batch_size]))).cpu()
           for i in range(0, len(kept), batch_size)]
    enc = torch.cat(out).numpy().astype(np.int16)
    if every == 1:
        return enc
    full = np.full((len(frames), *enc.shape[1:]), NOT_ENCODED, np.int16)
    full[::every] = enc
    return full


def token_item(seg, tokens: np.ndarray, tokens_meta: dict) -> dict:
    """Token sample: tokens + the segment's label/pose arrays and extras as they are."""
    meta = copy.deepcopy(seg.meta)
    meta["tokens"] = tokens_meta
    item = {k: v for k, v in seg.arrays().items() if k not in seg.extras}
    item.update(tokens=tokens, extras=dict(seg.extras), meta=meta)
    return item


class _ShardSegments(torch.utils.data.Dataset):
    """Item i: input shard ``urls[i]`` read whole, in a loader worker when there are workers (the
    H.264 decoding is what bounds tokenize, not the encoder): {"url", "segments", "stats"}; a
    shard whose part is already complete is not read ({"url", "done": its manifest}); None pads
    a rank's list (a no-op step)."""

    def __init__(self, urls: list, out: Path, skip_bad: bool):
        self.urls, self.out, self.skip_bad = list(urls), Path(out), bool(skip_bad)

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int):
        url = self.urls[i]
        if url is None:
            return None
        part = self.out / part_name(url)
        if (part / MANIFEST).exists() and read_json(part / MANIFEST).get("complete"):
            return {"url": url, "done": read_json(part / MANIFEST)}
        # with data.skip_bad a sample whose video is bad is skipped here (and counted once)
        stats: dict = {}
        segments = list(iter_samples(url, skip_bad=self.skip_bad, stats=stats))
        return {"url": url, "segments": segments, "stats": stats}


class TokenizeModule(L.LightningModule):
    """predict_step(url) tokenizes one input shard into out/<part>/ and returns its summary."""

    def __init__(self, model: Tokenizer, out: str, batch_size: int, maxcount: int, allow_resize: bool,
                 tokens_meta: dict, urls: list[str], skip_bad: bool = False, num_workers: int = 0):
        super().__init__()
        self.skip_bad, self.num_workers = bool(skip_bad), int(num_workers)
        self.model, self.urls = model, list(urls)
        self.out, self.batch_size, self.maxcount = Path(out), int(batch_size), int(maxcount)
        self.allow_resize, self.tokens_meta = allow_resize, tokens_meta

    def predict_dataloader(self):
        return _url_loader(self.urls, self.trainer.global_rank, self.trainer.world_size, self.out, self.skip_bad,
                           self.num_workers)

    def predict_step(self, item, batch_idx=0):
        if item is None:  # padding: every rank runs the same number of predict steps
            return None
        url = item["url"]
        part = self.out / part_name(url)
        if "done" in item:
            m = item["done"]
            return {"url": url, "part": part.name, "samples": m["samples"], "frames": m["frames"], "skipped": True}
        segments, stats = item["segments"], item["stats"]
        if not segments:
            raise EmptyShardError(f"{url}: shard holds no segments (nothing to tokenize; "
                                  f"{stats.get('skipped', 0)} bad sample(s) skipped as unreadable)")
        self.model.eval()

        def encode(i):
            seg = segments[i]

            def prepare(fr):
                return resize_frames(fr, self.model.frame_size, self.allow_resize,
                                     f"{url}: segment {seg.segment_id!r}, field 'frames'")
            tokens = encode_segment(self.model, seg.frames, self.batch_size, int(self.tokens_meta.get("every", 1)),
                                    prepare)
            return token_item(seg, tokens, self.tokens_meta)

        m = write_shards(part, len(segments), encode, maxcount=self.maxcount, workers=1, prefix="tokens",
                         progress=False)
        atomic_write_json(part / SKIPPED, {"skipped_bad": int(stats.get("skipped", 0)),
                                           "errors": list(stats.get("errors", []))})
        return {"url": url, "part": part.name, "samples": m["samples"], "frames": m["frames"], "skipped": False}


def _rank_urls(urls: list[str], rank: int, world: int) -> list:
    """Rank r's input shards r, r+W, ..., padded with None (a no-op step) to ceil(n / W), so
    every rank runs the same number of predict steps whatever the number of shards."""
    mine = urls[rank::world]
    return mine + [None] * (-(-len(urls) // world) - len(mine))


def _as_is(item):
    return item


def _url_loader(urls: list[str], rank: int, world: int, out: Path, skip_bad: bool = False, num_workers: int = 0):
    """Rank r's shards (``_rank_urls``), each read whole by one of ``num_workers`` loader
    processes (data.num_workers) while the rank encodes the one before."""
    mine = _rank_urls(urls, rank, world)
    workers = min(int(num_workers), sum(u is not None for u in mine))
    return torch.utils.data.DataLoader(_ShardSegments(mine, out, skip_bad), batch_size=None, shuffle=False,
                                       num_workers=workers, collate_fn=_as_is,
                                       prefetch_factor=1 if workers else None)


def combine_manifests(out: Path, urls: list[str]) -> dict:
    """out/manifest.json over every part (rank 0, after all ranks finished)."""
    parts, shards = [], []
    for url in urls:
        d = out / part_name(url)
        m = read_json(d / MANIFEST)
        sk = read_json(d / SKIPPED) if (d / SKIPPED).exists() else {}
        parts.append({"input": url, "dir": d.name, "complete": bool(m.get("complete")),
                      "samples": m.get("samples", 0), "frames": m.get("frames", 0),
                      "skipped_bad": int(sk.get("skipped_bad", 0)), "errors": sk.get("errors", [])})
        shards += [{**e, "name": f"{d.name}/{e['name']}"} for e in m.get("shards", [])]
    ids = [s for e in shards for s in e.get("segment_ids", [])]
    manifest = {"format": TOKEN_FORMAT, "kind": "tokens", "pattern": str(out / "*" / "*.tar"),
                "complete": all(p["complete"] for p in parts), "parts": parts, "shards": shards,
                "samples": len(ids), "frames": sum(p["frames"] for p in parts),
                "skipped_bad": sum(p["skipped_bad"] for p in parts)}
    if len(set(ids)) != len(ids):
        dup = sorted({s for s in ids if ids.count(s) > 1})[:5]
        raise ValueError(f"{out}: segment ids appear in more than one input shard: {dup}")
    atomic_write_json(out / MANIFEST, manifest)
    return manifest
