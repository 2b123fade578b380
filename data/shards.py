"""Webdataset shards of fleet logs: the format (members, encoding) and its deterministic, atomic,
resumable writing. Reading them (URLs, validation, the bad-input policy) is ``data.shard_reading``.

One sample per segment, key = ``meta.segment_id`` (no dots). Members:

- ``frames.mp4`` (H.264) or ``frames.jpgs`` (per-frame JPEG) for frame shards (data.video),
  ``tokens.npy`` int16 [T,h,w] for token shards;
- one ``<name>.npy`` per per-frame array (rel_pose, world_pose, speed, engaged, disengage,
  times, extras such as traffic); arrays over 64 KiB are ``<name>.npy.gz``, or for bool
  arrays (lane_mask) ``<name>.bits.npz`` (packed bits + shape, deflated); all bit-exact;
- ``meta.json``.

``write_shards`` puts items k*maxcount .. (k+1)*maxcount-1 in shard k, writes each shard to
a hidden temporary name and renames it into place, and lists finished shards (samples,
frames, sha256, bytes, segment ids) in ``manifest.json`` (written atomically). Re-running
skips shards whose file matches the manifest and writes the rest.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from drivegpt.data.schema import ARRAY_FIELDS, SEGMENT_ID_RE, Segment, SegmentError, validate
from drivegpt.data.video import CODECS, DEFAULT_CODEC, encode_frames
from drivegpt.runs import atomic_path, atomic_write_json, make_shared, read_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "drivegpt-shards/1"
GZIP_ABOVE = 64 * 1024  # arrays larger than this many bytes are stored as .npy.gz
LABEL_FIELDS = [k for k in ARRAY_FIELDS if k != "frames"]
TAR_MTIME = 0  # fixed member mtime: identical inputs give identical shard bytes


class ShardError(ValueError):
    """A shard or one of its samples is unreadable; the message names the file and key."""


# ----------------------------------------------------------------------------- encoding
def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _bits_bytes(arr: np.ndarray) -> bytes:
    """bool array -> npz (deflated) of its packed bits and shape; fixed zip timestamps."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in (("bits", np.packbits(arr.ravel())), ("shape", np.asarray(arr.shape, np.int64))):
            info = zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, _npy_bytes(v))
    return buf.getvalue()


def _load_bits(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        shape = tuple(int(x) for x in z["shape"])
        return np.unpackbits(z["bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)


def _token_placeholder(item: dict) -> Segment:
    """A Segment view of a token sample so data.schema.validate can check its arrays."""
    t = len(item["tokens"]) if isinstance(item.get("tokens"), np.ndarray) else 0
    frames = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (t, 1, 1, 3))
    known = set(LABEL_FIELDS) | {"tokens", "meta", "extras"}
    extras = dict(item.get("extras") or {})
    extras.update({k: v for k, v in item.items() if k not in known})
    return Segment(frames=frames, **{k: item.get(k) for k in LABEL_FIELDS}, meta=item.get("meta"),
                   extras=extras)


def validate_item(item: Segment | dict, where: str = "") -> Segment | dict:
    """Validate a Segment or a token sample dict (tokens int [T,h,w] + the Segment arrays)."""
    if isinstance(item, Segment):
        return validate(item, where=where)
    if not isinstance(item, dict):
        raise TypeError(f"{where}: an item must be a Segment or a token dict, got {type(item).__name__}")
    seg = _token_placeholder(item)
    sid = seg.meta.get("segment_id", "?") if isinstance(seg.meta, dict) else "?"
    tok = item.get("tokens")
    if not isinstance(tok, np.ndarray) or tok.ndim != 3 or tok.dtype.kind not in "iu":
        raise SegmentError(f"{where}: segment {sid!r}, field 'tokens': must be an integer array "
                           f"[T,h,w], got {getattr(tok, 'dtype', type(tok).__name__)} "
                           f"{getattr(tok, 'shape', '')}")
    validate(seg, where=where)
    return item


def item_to_members(item: Segment | dict, codec: str = DEFAULT_CODEC) -> tuple[str, dict[str, bytes], int]:
    """Segment / token dict -> (key, {member suffix: bytes}, number of frames)."""
    validate_item(item)
    if isinstance(item, Segment):
        meta, arrays = item.meta, item.arrays()
        members = {f"frames.{codec}": encode_frames(item.frames, codec, fps=float(meta["fps"]))}
    else:
        meta = item["meta"]
        arrays = {k: item[k] for k in LABEL_FIELDS}
        arrays.update(item.get("extras") or {})
        arrays.update({k: v for k, v in item.items() if k not in arrays and k not in ("meta", "extras")})
        members = {}
    key = str(meta["segment_id"])
    for name, arr in arrays.items():
        if "." in name or not SEGMENT_ID_RE.match(name) or name in ("meta", "frames"):
            raise ValueError(f"segment {key!r}: array name {name!r} cannot be a shard member")
        data = _npy_bytes(arr)
        if len(data) > GZIP_ABOVE and arr.dtype == np.bool_:  # masks: 1 bit per pixel, then deflate
            members[f"{name}.bits.npz"] = _bits_bytes(arr)
        elif len(data) > GZIP_ABOVE:
            members[f"{name}.npy.gz"] = gzip.compress(data, compresslevel=3, mtime=0)
        else:
            members[f"{name}.npy"] = data
    members["meta.json"] = json.dumps(meta, sort_keys=True).encode()
    return key, members, len(arrays["times"])


# ----------------------------------------------------------------------------- writing
_WORKER: dict[str, Any] = {}


def _init_worker(make_item, codec):
    _WORKER["make_item"], _WORKER["codec"] = make_item, codec


def _encode_index(i: int) -> tuple[int, str, dict[str, bytes], int]:
    try:
        item = _WORKER["make_item"](i)
        return (i, *item_to_members(item, _WORKER["codec"]))
    except (SegmentError, ValueError, TypeError) as e:
        try:
            err = type(e)(f"item {i}: {e}")
        except Exception:  # exception types with other constructors: keep the original
            raise e from None
        raise err from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory: str | os.PathLike) -> dict:
    """``directory/manifest.json`` as a dict (FileNotFoundError / ValueError naming the file)."""
    return read_json(Path(directory) / MANIFEST)


def shard_name(prefix: str, k: int) -> str:
    return f"{prefix}-{k:06d}.tar"


def write_shards(out_dir: str | os.PathLike, n_items: int, make_item: Callable[[int], Segment | dict],
                 maxcount: int, workers: int = 1, prefix: str = "shard", codec: str = DEFAULT_CODEC,
                 progress: bool = True) -> dict:
    """Write items 0..n_items-1 (``make_item(i)``) into shards of ``maxcount``; return the manifest.

    ``make_item`` runs in ``workers`` processes (forked, so closures work on Linux; pass a
    picklable function where the start method is spawn). Finished shards already in the
    manifest with a matching sha256 are kept; the rest are (re)written.
    """
    from tqdm.auto import tqdm
    import webdataset as wds

    if codec not in CODECS:
        raise ValueError(f"unknown frame codec {codec!r}; choose one of {CODECS}")
    if maxcount < 1 or n_items < 0:
        raise ValueError(f"need maxcount >= 1 and n_items >= 0 (got {maxcount}, {n_items})")
    if "." in prefix or "/" in prefix:
        raise ValueError(f"shard prefix {prefix!r} must not contain '.' or '/'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in glob.glob(str(out / f".{prefix}-*.tar.*.tmp")):  # left by a killed writer
        os.unlink(stale)

    n_shards = -(-n_items // maxcount)
    manifest = {"format": FORMAT, "prefix": prefix, "maxcount": maxcount, "n_items": n_items,
                "codec": codec, "kind": None, "complete": False, "shards": []}
    done: dict[int, dict] = {}
    if (out / MANIFEST).exists():
        old = read_manifest(out)
        if old.get("prefix") != prefix or old.get("maxcount") != maxcount or old.get("codec") != codec:
            raise ValueError(f"{out / MANIFEST}: written with prefix={old.get('prefix')!r} "
                             f"maxcount={old.get('maxcount')} codec={old.get('codec')!r}; "
                             f"refusing to mix with prefix={prefix!r} maxcount={maxcount} codec={codec!r} "
                             "(use another directory)")
        manifest["kind"] = old.get("kind")
        for entry in old.get("shards", []):
            k = int(entry["index"])
            path = out / entry["name"]
            expected = min(maxcount, n_items - k * maxcount)
            if k < n_shards and entry["samples"] == expected and path.exists() \
                    and path.stat().st_size == entry["bytes"] and _sha256(path) == entry["sha256"]:
                done[k] = entry
    todo = [k for k in range(n_shards) if k not in done]
    indices = [i for k in todo for i in range(k * maxcount, min(n_items, (k + 1) * maxcount))]

    def save():
        manifest["shards"] = [done[k] for k in sorted(done)]
        manifest["samples"] = sum(e["samples"] for e in manifest["shards"])
        manifest["frames"] = sum(e["frames"] for e in manifest["shards"])
        manifest["complete"] = len(done) == n_shards
        atomic_write_json(out / MANIFEST, manifest)

    pool = None
    if workers > 1 and len(indices) > 1:
        pool = multiprocessing.Pool(min(workers, len(indices)), initializer=_init_worker,
                                    initargs=(make_item, codec))
        results = pool.imap(_encode_index, indices, chunksize=1)
    else:
        _init_worker(make_item, codec)
        results = map(_encode_index, indices)
    bar = tqdm(total=n_items, initial=n_items - len(indices), desc=f"shards -> {out}",
               unit="item", disable=not progress)
    try:
        for k in todo:
            name = shard_name(prefix, k)
            count = min(maxcount, n_items - k * maxcount)
            ids, frames = [], 0
            with atomic_path(out / name) as tmp:
                with open(tmp, "wb") as f:
                    with wds.TarWriter(f, encoder=False, mtime=TAR_MTIME) as sink:
                        for _ in range(count):
                            i, key, members, t = next(results)
                            kind = "tokens" if "tokens.npy" in members else "frames"
                            if manifest["kind"] not in (None, kind):
                                raise ValueError(f"item {i}: a {kind} sample in {manifest['kind']} shards")
                            manifest["kind"] = kind
                            sink.write({"__key__": key, **members})
                            ids.append(key)
                            frames += t
                            bar.update(1)
                    f.flush()
                    os.fsync(f.fileno())
                make_shared(tmp)  # mkstemp makes 0600; shards are meant to be shared
                done[k] = {"index": k, "name": name, "samples": count, "frames": frames,
                           "sha256": _sha256(tmp), "bytes": tmp.stat().st_size, "segment_ids": ids}
            save()
        save()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return manifest
