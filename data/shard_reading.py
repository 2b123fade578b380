"""Reading webdataset shards of fleet logs (the format ``data.shards`` writes): shard URLs
(``expand_urls``), refusal of unfinished writes (``require_complete``), sample decoding and
validation (``decode_sample``), the bad-input policy (``BadInput``: raise naming the file and key,
or with ``skip_bad`` log, count and skip) and plain iteration (``iter_samples``).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from drivegpt.data.schema import Segment, SegmentError, validate
from drivegpt.data.video import VideoError, decode_frames
from drivegpt.data.shards import LABEL_FIELDS, MANIFEST, ShardError, _load_bits, read_manifest, validate_item

log = logging.getLogger(__name__)


def expand_urls(spec: str | os.PathLike | Iterable, check: bool = True) -> list[str]:
    """Shard URLs from a file, a directory (every *.tar below it, sorted; per-rank
    sub-directories of token shards included), a brace pattern
    (``shard-{000000..000009}.tar``), a glob, a ``pipe:`` command, or a list of those.

    ``check`` (default) refuses shards of an unfinished write (``require_complete``)."""
    urls = _expand(spec)
    if check:
        require_complete(urls)
    return urls


def _expand(spec) -> list[str]:
    from braceexpand import braceexpand

    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "???")):
        raise ValueError("no shards given (set data.shards=...)")
    if not isinstance(spec, (str, os.PathLike)):
        return [u for s in spec for u in _expand(s)]
    spec = os.fspath(spec)
    if spec.startswith("pipe:") or "://" in spec:
        return list(braceexpand(spec))
    if os.path.isdir(spec):
        root = Path(spec)
        urls = sorted(str(p) for p in root.rglob("*.tar")
                      if not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not urls:
            raise FileNotFoundError(f"{spec}: directory holds no .tar shards")
        return urls
    if os.path.isfile(spec):
        return [spec]
    urls = []
    for part in braceexpand(spec):
        matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        urls += matches
    missing = [u for u in urls if not os.path.isfile(u)]
    if not urls or missing:
        raise FileNotFoundError(f"{spec}: no such shard file(s): {', '.join(missing[:3]) or spec}"
                                f" ({len(missing)} missing)")
    return urls


class IncompleteShardsError(ShardError):
    """A shard or token directory whose manifest says it is unfinished (or has none where one is due)."""


TOKEN_FORMAT = "drivegpt-token-shards/1"


def _manifest_of(directory: Path) -> dict | None:
    p = directory / MANIFEST
    return read_manifest(directory) if p.exists() else None


def require_complete(urls: Iterable[str]) -> None:
    """Refuse shards of an unfinished write: a directory whose manifest.json says
    ``complete: false``, and a ``drivegpt tokenize`` part whose output directory has no
    complete top-level manifest.json (tokenize stopped before every part was written).
    Directories without a manifest (hand-made shards) and remote URLs are not checked."""
    dirs = sorted({Path(u).parent for u in urls
                   if not (str(u).startswith("pipe:") or "://" in str(u)) and os.path.isfile(u)})
    for d in dirs:
        m = _manifest_of(d)
        if m is None:
            continue
        if not m.get("complete"):
            n_shards = -(-int(m.get("n_items", 0)) // max(1, int(m.get("maxcount", 1))))
            what = ("`drivegpt tokenize` with the same checkpoint and out=" if m.get("prefix") == "tokens"
                    else "the same `drivegpt data ingest` / `drivegpt fleet generate` command with out=")
            raise IncompleteShardsError(
                f"{d / MANIFEST}: incomplete ({len(m.get('shards', []))} of {n_shards} shards, "
                f"{m.get('samples', 0)} of {m.get('n_items', '?')} samples written; 'complete' is false): "
                f"the write stopped early. Finish it by re-running {what}{d} (it resumes: finished "
                f"shards are kept), or delete {d} and write it again")
        if m.get("prefix") == "tokens":  # a tokenize part: the run's top-level manifest must be complete
            top = _manifest_of(d.parent)
            if top is None or top.get("format") != TOKEN_FORMAT or not top.get("complete"):
                parts = sorted(p.name for p in d.parent.iterdir() if (p / MANIFEST).exists())
                why = ("has no manifest.json" if top is None else
                       "has a manifest.json that is not a complete token manifest")
                raise IncompleteShardsError(
                    f"{d.parent}: token directory {why} ({len(parts)} part(s) on disk: "
                    f"{', '.join(parts[:4])}{', ...' if len(parts) > 4 else ''}): `drivegpt tokenize` did "
                    f"not finish, so these shards may hold only part of the fleet. Finish it by re-running "
                    f"`drivegpt tokenize checkpoint=... data.shards=... out={d.parent}` (finished parts are "
                    "kept), or delete the directory and tokenize again")


def _load_npy(data: bytes, gz: bool) -> np.ndarray:
    if gz:
        data = gzip.decompress(data)
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_sample(sample: dict, url: str | None = None, frames: bool = True,
                  frame_indices=None) -> Segment | dict:
    """A raw webdataset sample ({suffix: bytes}) -> validated Segment (frame shards) or token dict.

    ``frames=False`` skips video decoding (the Segment then holds a zero-size frames view);
    ``frame_indices`` decodes only those frames (random access with the jpgs codec).
    Raises ShardError naming the file and key.
    """
    url = url or sample.get("__url__", "?")
    key = sample.get("__key__", "?")
    where = f"{url}: sample {key!r}"
    try:
        if "meta.json" not in sample:
            raise ShardError("missing member 'meta.json'")
        try:
            meta = json.loads(sample["meta.json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"member 'meta.json' is not valid JSON ({e})") from None
        arrays: dict[str, np.ndarray] = {}
        for suffix, data in sample.items():
            if suffix.startswith("__") or suffix == "meta.json":
                continue
            name, _, ext = suffix.partition(".")
            if ext in ("npy", "npy.gz", "bits.npz"):
                try:
                    arrays[name] = _load_bits(data) if ext == "bits.npz" else _load_npy(data, ext == "npy.gz")
                except Exception as e:
                    raise ShardError(f"member {suffix!r} is not a readable .npy ({e})") from None
        missing = [f"{k}.npy" for k in LABEL_FIELDS if k not in arrays]
        if missing:
            raise ShardError(f"missing member(s) {missing}")
        video = [s for s in sample if s.startswith("frames.")]
        if "tokens" in arrays:
            item = {k: arrays.pop(k) for k in LABEL_FIELDS}
            item["tokens"] = arrays.pop("tokens")
            item.update(arrays)
            item["meta"] = meta
            return validate_item(item, where=url)
        if not video:
            raise ShardError("missing member 'frames.mp4' (or 'frames.jpgs'/'tokens.npy')")
        t = len(arrays["times"])
        if frames:
            codec = video[0].partition(".")[2]
            try:
                fr = decode_frames(sample[video[0]], codec, indices=frame_indices)
            except VideoError as e:
                raise ShardError(f"member {video[0]!r}: {e}") from None
            if frame_indices is None and len(fr) != t:
                raise ShardError(f"member {video[0]!r} has {len(fr)} frames but 'times.npy' has {t}")
        else:
            fr = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (t, 1, 1, 3))
        seg = Segment(frames=fr, meta=meta, **{k: arrays.pop(k) for k in LABEL_FIELDS}, extras=arrays)
        if frame_indices is not None:  # partial decode: check the arrays only
            validate(Segment(**{**seg.__dict__, "frames": np.broadcast_to(
                np.zeros((1, 1, 1, 3), np.uint8), (t, 1, 1, 3))}), where=url)
            return seg
        if str(meta.get("segment_id")) != key:
            raise ShardError(f"meta.segment_id {meta.get('segment_id')!r} != sample key")
        return validate(seg, where=url)
    except ShardError as e:
        raise ShardError(f"{where}: {e}") from None
    except SegmentError as e:
        raise ShardError(f"{e} (sample {key!r})") from None


class BadInput:
    """Exception handler of the readers: raise a ShardError naming the shard, or count and skip.

    Each bad input is counted once: an error that was already counted (webdataset hands the
    same exception to the handler again at each level of its pipeline) is not counted again.
    """

    def __init__(self, skip_bad: bool = False, stats: dict | None = None):
        self.skip_bad = skip_bad
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("skipped", 0)
        self.stats.setdefault("errors", [])

    def describe(self, exn: Exception) -> str:
        if isinstance(exn, ShardError):
            return str(exn.args[0]) if exn.args else str(exn)
        urls = [a for a in exn.args[1:] if isinstance(a, str)]
        msg = str(exn.args[0]) if exn.args else type(exn).__name__
        msg = msg.split(" @ <")[0]  # webdataset appends the stream object's repr
        where = urls[-1] if urls else "shard"
        return f"{where}: corrupt or truncated tar ({type(exn).__name__}: {msg})"

    def __call__(self, exn: Exception) -> bool:
        if getattr(exn, "_drivegpt_counted", False):  # seen before: count it once
            if self.skip_bad:
                return True
            raise ShardError(self.describe(exn)) from None
        msg = self.describe(exn)
        if not self.skip_bad:
            raise ShardError(msg) from None
        try:
            exn._drivegpt_counted = True
        except AttributeError:
            pass
        self.stats["skipped"] += 1
        self.stats["errors"].append(msg)
        log.warning("skipping bad input (%d so far): %s", self.stats["skipped"], msg)
        return True


def _open_url(url: str):
    import webdataset as wds

    return wds.gopen(url) if url.startswith("pipe:") or "://" in url else open(url, "rb")


def shard_samples(url: str, handler: BadInput) -> Iterator[dict]:
    """Complete samples ({suffix: bytes, __key__, __url__}) of one tar shard, in order.

    A sample is yielded only once all its members are read (the next key starts or the tar
    ends cleanly), so a truncated tar never yields the half-read sample. A corrupt or
    truncated tar is one bad input: one ShardError naming the file, the sample key and the
    member being read; with ``skip_bad`` it is counted once and the rest of the shard skipped.
    """
    import tarfile

    from webdataset.tariterators import base_plus_ext

    cur: dict | None = None
    member = None
    try:
        stream = _open_url(url)
    except Exception as e:  # noqa: BLE001 - named and handed to the handler
        handler(ShardError(f"{url}: cannot open shard ({type(e).__name__}: {e})"))
        return
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                member = info.name
                if not info.isreg():
                    continue
                prefix, suffix = base_plus_ext(info.name)
                if prefix is None or prefix.startswith("__"):
                    continue
                data = tar.extractfile(info).read()
                if cur is not None and prefix != cur["__key__"]:
                    yield cur
                    cur = None
                if cur is None:
                    cur = {"__key__": prefix, "__url__": url}
                suffix = suffix.lower()
                if suffix in cur:
                    raise ShardError(f"{url}: sample {prefix!r}: member {info.name!r} appears twice")
                cur[suffix] = data
        if cur is not None:
            yield cur
    except ShardError as e:
        handler(e)
    except Exception as e:  # noqa: BLE001 - tarfile/zlib/OS errors of a damaged shard
        key = cur["__key__"] if cur else None
        where = (f"sample {key!r}, member {member!r}" if key else
                 f"member {member!r}" if member else "before the first sample")
        msg = str(e).split(" @ <")[0] or type(e).__name__
        handler(ShardError(f"{url}: {where}: corrupt or truncated tar ({type(e).__name__}: {msg}); "
                           "this sample and the rest of the shard are unreadable"))
    finally:
        try:
            stream.close()
        except Exception:  # noqa: BLE001
            pass


def tar_samples(handler: BadInput):
    """A webdataset pipeline stage: {"url": ...} items -> complete samples (``shard_samples``)."""

    def stage(src):
        for item in src:
            yield from shard_samples(item["url"] if isinstance(item, dict) else str(item), handler)

    return stage


def raw_samples(urls: list[str], handler: BadInput) -> Iterator[dict]:
    """Undecoded samples ({suffix: bytes, __key__, __url__}) of the shards, in order."""
    for url in urls:
        yield from shard_samples(url, handler)


def shards_fps(spec, skip_bad: bool = False, max_shards: int = 64) -> tuple[float, str]:
    """The log rate of the shards at ``spec``: ``meta.fps`` of the first sample of each shard (up
    to ``max_shards``), which must agree. Returns (fps, "url: sample 'key'" it was read from)."""
    found: dict[float, str] = {}
    handler = BadInput(skip_bad)
    for url in expand_urls(spec)[:max_shards]:
        for sample in shard_samples(url, handler):
            key = sample.get("__key__")
            where = f"{url}: sample {key!r}"
            try:
                meta = json.loads(sample["meta.json"])
                fps = float(meta["fps"])
            except KeyError as e:
                err = ShardError(f"{where}: missing {'member meta.json' if e.args[0] == 'meta.json' else 'meta.fps'}")
            except (ValueError, TypeError) as e:
                err = ShardError(f"{where}: member 'meta.json' has no readable fps ({e})")
            else:
                if not fps > 0:
                    err = ShardError(f"{where}: meta.fps is {fps}, expected > 0")
                else:
                    found.setdefault(fps, where)
                    break
            handler(err)  # raises unless skip_bad: then the next sample
    if not found:
        raise ShardError(f"{spec}: no readable sample to take meta.fps from")
    if len(found) > 1:
        rates = "; ".join(f"{f:g} Hz ({w})" for f, w in sorted(found.items()))
        raise ShardError(f"{spec}: the shards disagree on meta.fps: {rates}; one log rate per run (give the "
                         "stage shards of one rate, or re-ingest at one rate)")
    (fps, where), = found.items()
    return fps, where


def _segment_id_of(sample: dict) -> str | None:
    """The raw sample's ``meta.segment_id`` (None where meta.json does not parse: decoding says why)."""
    try:
        return str(json.loads(sample["meta.json"])["segment_id"])
    except (KeyError, TypeError, ValueError, UnicodeDecodeError):
        return None


def iter_samples(urls, skip_bad: bool = False, stats: dict | None = None,
                 frames: bool = True, keep: Callable[[str], bool] | None = None) -> Iterator[Segment | dict]:
    """Decoded, validated samples of ``urls`` (anything ``expand_urls`` takes), in shard order.

    Bad input raises ShardError naming the file and key; with ``skip_bad`` it is logged,
    counted in ``stats["skipped"]`` (messages in ``stats["errors"]``) and skipped.
    ``keep(segment_id)``: only those samples are decoded (e.g. one split: its video is the cost).
    """
    handler = BadInput(skip_bad, stats)
    for sample in raw_samples(expand_urls(urls), handler):
        if keep is not None and (sid := _segment_id_of(sample)) is not None and not keep(sid):
            continue
        try:
            yield decode_sample(sample, frames=frames)
        except ShardError as e:
            handler(e)
    if handler.stats["skipped"]:
        log.warning("skipped %d bad samples/shards", handler.stats["skipped"])
