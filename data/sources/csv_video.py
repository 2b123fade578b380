"""Generic source: any video file plus a CSV of per-frame labels -> Segment.

One CSV row per video frame, in order, with a header. Columns (names exact, lower case):

====================  ========  ===========================================================
column                required  meaning
====================  ========  ===========================================================
time                  yes       seconds, strictly increasing
dx, dy, dyaw          one pose  relative pose of the NEXT frame in this frame's ego frame
dz, droll, dpitch     optional  (x fwd, y left, z up; m and rad); last row ignored (0)
x, y, yaw             or pose   world pose (m, rad, yaw CCW from the world x axis)
z, roll, pitch        optional  missing optional pose columns are 0
speed                 no        forward speed m/s (default: from the pose, translation/dt)
engaged               no        1/0/true/false (default false: a human drove)
disengage             no        cause at this frame: 0-3 or NONE/STEER/BRAKE/GAS (or empty)
====================  ========  ===========================================================

Give either the relative pose columns or the world pose columns (if both, both are kept as
given). The video is decoded with OpenCV/FFmpeg (any container/codec it can read), cropped to
the output aspect ratio around ``center_row`` (fraction of the height, default 0.5) at full
width, and area-resized to (height, width). Bad input (missing column, unparsable or NaN
value, row count != frame count, unreadable video) raises ``SourceError`` naming the file and
the column/row.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from drivegpt.data.schema import CAUSE_NAMES, Cause, Segment, validate
from drivegpt.data.sources.common import (SourceError, camera_after_crop, crop_box, crop_resize,
                                 read_video, rel_from_world, sanitize_id, euler_to_matrix,
                                 world_from_rel)

REL_COLS = ("dx", "dy", "dz", "droll", "dpitch", "dyaw")
WORLD_COLS = ("x", "y", "z", "roll", "pitch", "yaw")
REL_REQUIRED = ("dx", "dy", "dyaw")
WORLD_REQUIRED = ("x", "y", "yaw")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".hevc", ".h264", ".h265")


def _parse_bool(v: str, where: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "y", "t"):
        return True
    if s in ("0", "false", "no", "n", "f", ""):
        return False
    raise SourceError(f"{where}: {v!r} is not a boolean (use 1/0 or true/false)")


def _parse_cause(v: str, where: str) -> int:
    s = v.strip().upper()
    if s in ("", "NONE", "0"):
        return 0
    if s in CAUSE_NAMES:
        return int(Cause[s])
    try:
        code = int(float(s))
    except ValueError:
        code = -1
    if code not in {int(c) for c in Cause}:
        raise SourceError(f"{where}: unknown disengage cause {v!r} (use 0-3 or NONE/STEER/BRAKE/GAS)")
    return code


def read_labels(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Parse and check the CSV -> dict of float64/bool/int8 arrays (keys: time, rel, world, ...)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise SourceError(f"{csv_path}: CSV file not found")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v if v is not None else "") for k, v in r.items()} for r in reader]
    if not header:
        raise SourceError(f"{csv_path}: empty CSV (no header row)")
    if not rows:
        raise SourceError(f"{csv_path}: no data rows")
    has_rel = all(c in header for c in REL_REQUIRED)
    has_world = all(c in header for c in WORLD_REQUIRED)
    missing = [c for c in ("time",) if c not in header]
    if not (has_rel or has_world):
        # name the missing columns of the pose family the CSV started to give
        n_rel = sum(c in header for c in REL_COLS)
        n_world = sum(c in header for c in WORLD_COLS)
        family = WORLD_REQUIRED if n_world > n_rel else REL_REQUIRED
        missing += [c for c in family if c not in header]
        hint = (f" (give relative pose columns {', '.join(REL_REQUIRED)} or world pose columns "
                f"{', '.join(WORLD_REQUIRED)})")
    else:
        hint = ""
    if missing:
        raise SourceError(f"{csv_path}: missing column(s) {', '.join(missing)}{hint}; header is {header}")

    def floats(col: str, default: float | None = None) -> np.ndarray:
        out = np.empty(len(rows))
        for i, r in enumerate(rows):
            v = r.get(col, "")
            where = f"{csv_path}: row {i + 2}, column {col!r}"  # +2: 1-based, after the header
            if col not in header:
                out[i] = default
                continue
            try:
                x = float(v)
            except ValueError:
                raise SourceError(f"{where}: {v!r} is not a number") from None
            if not math.isfinite(x):
                raise SourceError(f"{where}: value is {v.strip()} (NaN/inf not allowed)")
            out[i] = x
        return out

    out: dict[str, np.ndarray] = {"time": floats("time")}
    dt = np.diff(out["time"])
    if (dt <= 0).any():
        i = int(np.argwhere(dt <= 0)[0, 0]) + 1
        raise SourceError(f"{csv_path}: row {i + 2}, column 'time': not strictly increasing")
    if has_rel:
        out["rel"] = np.stack([floats(c, 0.0) for c in REL_COLS], axis=1)
    if has_world:
        out["world"] = np.stack([floats(c, 0.0) for c in WORLD_COLS], axis=1)
    if "speed" in header:
        out["speed"] = floats("speed")
    out["engaged"] = np.array([_parse_bool(r.get("engaged", ""), f"{csv_path}: row {i + 2}, column 'engaged'")
                               for i, r in enumerate(rows)], dtype=bool)
    out["disengage"] = np.array([_parse_cause(r.get("disengage", ""), f"{csv_path}: row {i + 2}, column 'disengage'")
                                 for i, r in enumerate(rows)], dtype=np.int8)
    bad = np.argwhere((out["disengage"] != 0) & ~out["engaged"])
    if len(bad):
        raise SourceError(f"{csv_path}: row {int(bad[0, 0]) + 2}, column 'disengage': a disengagement "
                          "on a row where engaged is false (disengagements only happen while engaged)")
    return out


def load_csv_video(video: str | Path, csv_path: str | Path | None = None, height: int = 128,
                   width: int = 256, center_row: float = 0.5, hfov_deg: float = 60.0,
                   vehicle: dict | None = None, segment_id: str | None = None) -> Segment:
    """Read ``video`` + its CSV (default: same path with ``.csv``) into a validated Segment."""
    video = Path(video)
    csv_path = Path(csv_path) if csv_path else video.with_suffix(".csv")
    lab = read_labels(csv_path)
    T = lab["time"].shape[0]
    out_hw = (int(height), int(width))
    state = {}

    def transform(frame):
        if "box" not in state:
            state["src"] = frame.shape[:2]
            state["box"] = crop_box(frame.shape[:2], out_hw, center_row * frame.shape[0])
        return crop_resize(frame, state["box"], out_hw)

    frames = read_video(video, transform, max_frames=T + 1)
    if frames.shape[0] != T:
        raise SourceError(f"{csv_path}: {T} rows but video {video} has "
                          f"{frames.shape[0] if frames.shape[0] <= T else f'more than {T}'} frames "
                          "(one CSV row per frame)")
    if "rel" in lab:
        rel = lab["rel"].copy()
        rel[-1] = 0.0
    if "world" in lab:
        world = lab["world"]
        if "rel" not in lab:
            rel = rel_from_world(world[:, :3], euler_to_matrix(world[:, 3:]))
    else:
        world = world_from_rel(rel)
    if "speed" in lab:
        speed = lab["speed"]
    else:  # forward translation per frame over its duration; the last frame repeats
        dt = np.diff(lab["time"])
        speed = np.empty(T)
        speed[:-1] = rel[:-1, 0] / dt if T > 1 else 0.0
        speed[-1] = speed[-2] if T > 1 else 0.0
    fps = 1.0 / float(np.median(np.diff(lab["time"]))) if T > 1 else 20.0
    H, W = state["src"]
    fx = 0.5 * W / math.tan(math.radians(hfov_deg) / 2)
    camera = camera_after_crop(fx, fx, W / 2, H / 2, state["box"], out_hw)
    seg = Segment(
        frames=frames, rel_pose=rel.astype(np.float32), world_pose=world.astype(np.float32),
        speed=speed.astype(np.float32), engaged=lab["engaged"], disengage=lab["disengage"],
        times=lab["time"].astype(np.float64),
        meta=dict(source="csv_video", segment_id=segment_id or sanitize_id(video.stem),
                  fps=round(fps, 6), camera=camera, vehicle=vehicle or {"model": "unknown"},
                  path=str(video), csv=str(csv_path), camera_assumed_hfov_deg=hfov_deg),
    )
    return validate(seg, where=str(csv_path))


def find_pairs(path: str | Path, csv_path: str | Path | None = None) -> list[tuple[Path, Path]]:
    """(video, csv) pairs: ``path`` is a video file (CSV beside it or ``csv_path``) or a
    directory of videos each with a same-named ``.csv``."""
    path = Path(path)
    if path.is_file():
        return [(path, Path(csv_path) if csv_path else path.with_suffix(".csv"))]
    if not path.is_dir():
        raise SourceError(f"{path}: no such file or directory")
    pairs = [(v, v.with_suffix(".csv")) for v in sorted(path.iterdir())
             if v.suffix.lower() in VIDEO_EXTS and v.with_suffix(".csv").is_file()]
    if not pairs:
        raise SourceError(f"{path}: no video file with a same-named .csv ({', '.join(VIDEO_EXTS)})")
    return pairs


class CsvVideoSource:
    """Indexed source over (video, CSV) pairs; one Segment per video."""

    def __init__(self, path: str | Path, csv: str | Path | None = None, height: int = 128,
                 width: int = 256, center_row: float = 0.5, hfov_deg: float = 60.0):
        self.pairs = find_pairs(path, csv)
        self.kw = dict(height=height, width=width, center_row=center_row, hfov_deg=hfov_deg)
        self.n_items = len(self.pairs)

    def make_item(self, i: int) -> Segment:
        video, csv_path = self.pairs[i]
        return load_csv_video(video, csv_path, **self.kw)
