"""Run directories, atomic file writes and ``metrics.json``.

Every stage writes under one run directory (``run_dir``). Files are written to a temporary
name in the same directory and renamed into place, so a crash or Ctrl-C never leaves a
partial file under its final name. Files are made readable by everyone (``FILE_MODE``, 0644,
as ``cp`` or a shell redirect would under the usual umask; ``mkstemp`` alone gives 0600, which
teammates on a shared cluster filesystem cannot read).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

METRICS_FILE = "metrics.json"
DONE_FILE = "DONE"
FILE_MODE = 0o644  # every output file: manifests, shards, checkpoints, videos, report


def make_shared(path: str | os.PathLike) -> None:
    """chmod ``path`` to FILE_MODE (a temporary file from mkstemp is 0600)."""
    os.chmod(path, FILE_MODE)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        make_shared(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(x: Any) -> Any:
    """Convert numpy/torch scalars and arrays to plain JSON; NaN/inf become null."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def flatten_metrics(d: dict, prefix: str = "") -> dict:
    """Nested metrics -> {"a.b.c": scalar} (scalars and strings only; other values dropped)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_metrics(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def write_png(path: str | os.PathLike, rgb: Any) -> Path:
    """uint8 [H, W, 3] RGB -> PNG at ``path``, atomically."""
    import cv2
    import numpy as np

    path = Path(path)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(np.asarray(rgb)[..., ::-1]))
    if not ok:
        raise ValueError(f"{path}: could not encode PNG from array {np.shape(rgb)} {np.asarray(rgb).dtype}")
    return atomic_write_bytes(path, buf.tobytes())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_metrics(run_dir: str | os.PathLike, metrics: dict, merge: bool = True) -> Path:
    """Write ``run_dir/metrics.json`` atomically (merged into an existing file by default)."""
    path = Path(run_dir) / METRICS_FILE
    current = read_json(path) if (merge and path.exists()) else {}
    current.update(_jsonable(metrics))
    return atomic_write_json(path, current)


def mark_done(run_dir: str | os.PathLike, info: dict | None = None) -> Path:
    """Mark a stage's run directory complete (the pipeline skips complete stages)."""
    return atomic_write_json(Path(run_dir) / DONE_FILE, info or {})


def is_done(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / DONE_FILE).exists()
