"""The fleet-log schema: one ``Segment`` per contiguous drive (comma2k19-style minute).

Conventions (every source converts to these):

- Ego frame: x forward, y left, z up (ISO 8855). Angles in radians, yaw positive to the
  left (counter-clockwise seen from above). Euler angles are (roll, pitch, yaw), composed
  as R = Rz(yaw) @ Ry(pitch) @ Rx(roll).
- ``world_pose[t]`` = (x, y, z, roll, pitch, yaw) of the ego (rear axle, ground level) in a
  segment-local world frame (z up).
- ``rel_pose[t]`` = pose of frame t+1 expressed in the ego frame at t:
  (dx, dy, dz, droll, dpitch, dyaw), translation in metres in the ego frame at t and the
  Euler angles of R_t^T R_{t+1}. This is the world model's conditioning signal. The last
  row (no next frame) is zero.
- ``speed[t]``: forward speed in m/s. ``times[t]``: seconds, strictly increasing.
- ``engaged[t]``: the autopilot drives at frame t. ``disengage[t]``: ``Cause`` code of a
  disengagement happening at frame t (0 = none); non-zero only where engaged[t] is true.
- ``frames[t]``: uint8 RGB [H, W, 3] from the road-facing camera.
- ``extras``: optional per-frame arrays with leading dimension T that only some sources can
  provide (the road world adds ``lane_mask`` bool [T,H,W] and ``traffic`` float32 [T,N,4]).
- ``meta``: JSON-able dict with at least ``source``, ``segment_id`` (no dots, it is the
  webdataset key), ``fps``, ``camera`` (fx, fy, cx, cy, width, height) and ``vehicle``.
  Optional: ``cruise_speed`` (m/s, > 0), the driver's cruise set speed over the segment (what
  openpilot's longitudinal planner reads as v_cruise; nothing in a frame shows it). Sources
  that do not log it leave it out, and the policy is told it is unknown.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Cause(enum.IntEnum):
    """Disengagement causes, as openpilot labels them. Comfort violations fold into these:
    lateral-acceleration limit -> STEER, longitudinal-jerk limit -> BRAKE."""

    NONE = 0
    STEER = 1
    BRAKE = 2
    GAS = 3


CAUSE_NAMES = [c.name for c in Cause if c != Cause.NONE]  # ["STEER", "BRAKE", "GAS"]

# field -> (dtype, shape after the leading T; None = image-sized)
ARRAY_FIELDS: dict[str, tuple[np.dtype, tuple[int, ...] | None]] = {
    "frames": (np.dtype(np.uint8), None),
    "rel_pose": (np.dtype(np.float32), (6,)),
    "world_pose": (np.dtype(np.float32), (6,)),
    "speed": (np.dtype(np.float32), ()),
    "engaged": (np.dtype(np.bool_), ()),
    "disengage": (np.dtype(np.int8), ()),
    "times": (np.dtype(np.float64), ()),
}
REQUIRED_META = ("source", "segment_id", "fps", "camera", "vehicle")
SEGMENT_ID_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class SegmentError(ValueError):
    """A segment broke the schema; the message names the segment and the field."""


@dataclass
class Segment:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    rel_pose: np.ndarray  # float32 [T, 6]
    world_pose: np.ndarray  # float32 [T, 6]
    speed: np.ndarray  # float32 [T]
    engaged: np.ndarray  # bool [T]
    disengage: np.ndarray  # int8 [T]
    times: np.ndarray  # float64 [T]
    meta: dict[str, Any]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def segment_id(self) -> str:
        return str(self.meta.get("segment_id", "?"))

    def __len__(self) -> int:
        return int(self.times.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """All per-frame arrays except frames (labels, poses, extras)."""
        out = {k: getattr(self, k) for k in ARRAY_FIELDS if k != "frames"}
        out.update(self.extras)
        return out


def validate(seg: Segment, fps: float | None = None, where: str = "") -> Segment:
    """Check ``seg`` against the schema; raise ``SegmentError`` naming segment and field.

    ``fps``: expected frame rate (checked against meta and the timestamps) if given.
    ``where``: file or URL the segment came from, prefixed to messages.
    """
    sid = seg.meta.get("segment_id", "?") if isinstance(seg.meta, dict) else "?"
    prefix = f"{where}: " if where else ""

    def fail(field_: str, msg: str):
        raise SegmentError(f"{prefix}segment {sid!r}, field {field_!r}: {msg}")

    if not isinstance(seg.meta, dict):
        fail("meta", f"must be a dict, got {type(seg.meta).__name__}")
    for k in REQUIRED_META:
        if k not in seg.meta:
            fail("meta", f"missing key {k!r}")
    if "cruise_speed" in seg.meta:
        c = seg.meta["cruise_speed"]
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not np.isfinite(c) or c <= 0:
            fail("meta.cruise_speed", f"must be a finite speed > 0 in m/s (or absent when unknown), got {c!r}")
    if not SEGMENT_ID_RE.match(str(sid)):
        fail("meta.segment_id", "must be non-empty and use only letters, digits, '_' and '-' "
             "(it is the webdataset key; dots are not allowed)")

    t = None
    for name, (dtype, tail) in ARRAY_FIELDS.items():
        arr = getattr(seg, name)
        if not isinstance(arr, np.ndarray):
            fail(name, f"must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != dtype:
            fail(name, f"dtype {arr.dtype}, expected {dtype}")
        if t is None:
            t = arr.shape[0] if arr.ndim else 0
        if arr.ndim == 0 or arr.shape[0] != t:
            fail(name, f"length {arr.shape[0] if arr.ndim else 'scalar'} != {t} frames")
        if tail is None:
            if arr.ndim != 4 or arr.shape[-1] != 3:
                fail(name, f"shape {arr.shape}, expected [T, H, W, 3]")
        elif arr.shape[1:] != tail:
            fail(name, f"shape {arr.shape}, expected [T, {', '.join(map(str, tail))}]".replace(", ]", "]"))
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr.reshape(t, -1)).all(axis=1))[0, 0])
            fail(name, f"contains NaN or inf (first at frame {bad})")
    if t == 0:
        fail("times", "segment has no frames")

    dt = np.diff(seg.times)
    if (dt <= 0).any():
        bad = int(np.argwhere(dt <= 0)[0, 0]) + 1
        fail("times", f"not strictly increasing (at frame {bad})")
    meta_fps = float(seg.meta["fps"])
    if fps is not None and abs(meta_fps - fps) > 1e-6:
        fail("meta.fps", f"{meta_fps} Hz, expected {fps} Hz")
    if t > 1:
        measured = 1.0 / float(np.median(dt))
        if abs(measured - meta_fps) > 0.05 * meta_fps:
            fail("times", f"median frame rate {measured:.2f} Hz does not match meta.fps {meta_fps} Hz")

    codes = np.unique(seg.disengage)
    valid = {int(c) for c in Cause}
    if not set(codes.tolist()) <= valid:
        fail("disengage", f"unknown cause codes {sorted(set(codes.tolist()) - valid)}")
    if (seg.disengage != 0)[~seg.engaged].any():
        fail("disengage", "disengagement on a frame where the autopilot was not engaged")

    for name, arr in seg.extras.items():
        if not isinstance(arr, np.ndarray) or arr.ndim == 0 or arr.shape[0] != t:
            fail(f"extras.{name}", f"must be an array with leading dimension {t}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            fail(f"extras.{name}", "contains NaN or inf")
    return seg
