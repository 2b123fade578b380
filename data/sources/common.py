"""Helpers every source shares: SE(3) poses in the schema convention, video decoding,
the commaVQ-style crop/resize, and segment-id sanitising.

Pose convention (data.schema): ego frame x forward, y left, z up; Euler angles (roll, pitch,
yaw) with R = Rz(yaw) @ Ry(pitch) @ Rx(roll); ``rel_pose[t]`` is frame t+1 in the ego frame
at t, last row zero.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Callable, Iterator, Protocol

import cv2
import numpy as np

from drivegpt.data.poses import euler_to_matrix, matrix_to_euler  # noqa: F401  (re-exported)
from drivegpt.data.schema import Segment


class Source(Protocol):
    """What ``data.ingest`` and ``data.shards.write_shards`` need from a source.

    Instances must be picklable (``make_item`` runs in worker processes)."""

    n_items: int

    def make_item(self, i: int) -> Segment: ...


class SourceError(ValueError):
    """Bad input to a source; the message names the file and the key/column/row."""


# ------------------------------------------------------------------------------------------
# rotations (numpy, batched over leading dims; Euler helpers come from data.poses)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (w, x, y, z) [..., 4] -> rotation matrices [..., 3, 3]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    R = np.empty(q.shape[:-1] + (3, 3))
    R[..., 0, 0] = 1 - 2 * (y * y + z * z)
    R[..., 0, 1] = 2 * (x * y - w * z)
    R[..., 0, 2] = 2 * (x * z + w * y)
    R[..., 1, 0] = 2 * (x * y + w * z)
    R[..., 1, 1] = 1 - 2 * (x * x + z * z)
    R[..., 1, 2] = 2 * (y * z - w * x)
    R[..., 2, 0] = 2 * (x * z - w * y)
    R[..., 2, 1] = 2 * (y * z + w * x)
    R[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return R


def rel_from_world(positions: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """World positions [T,3] and ego->world rotations [T,3,3] -> rel_pose [T,6] (last row 0).

    rel_pose[t] = (R_t^T (p_{t+1} - p_t), euler(R_t^T R_{t+1})).
    """
    T = positions.shape[0]
    rel = np.zeros((T, 6), dtype=np.float64)
    if T > 1:
        Rt = rotations[:-1]
        d = positions[1:] - positions[:-1]
        rel[:-1, :3] = np.einsum("tji,tj->ti", Rt, d)  # R_t^T d
        rel[:-1, 3:] = matrix_to_euler(np.einsum("tji,tjk->tik", Rt, rotations[1:]))
    return rel


def world_from_rel(rel_pose: np.ndarray, origin: np.ndarray | None = None) -> np.ndarray:
    """Compose rel_pose [T,6] into world poses [T,6] starting at ``origin`` (default zero)."""
    T = rel_pose.shape[0]
    origin = np.zeros(6) if origin is None else np.asarray(origin, dtype=np.float64)
    p = origin[:3].copy()
    R = euler_to_matrix(origin[3:])
    out = np.zeros((T, 6), dtype=np.float64)
    dR = euler_to_matrix(rel_pose[:, 3:])
    for t in range(T):
        out[t, :3] = p
        out[t, 3:] = matrix_to_euler(R)
        p = p + R @ rel_pose[t, :3]
        R = R @ dR[t]
    return out


def world_pose_array(positions: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Positions [T,3] + rotations [T,3,3] -> world_pose [T,6] (x, y, z, roll, pitch, yaw)."""
    return np.concatenate([positions, matrix_to_euler(rotations)], axis=-1)


# ------------------------------------------------------------------------------------------
# frames


def crop_box(src_hw: tuple[int, int], out_hw: tuple[int, int], center_row: float | None = None
             ) -> tuple[int, int, int, int]:
    """The largest box with the output aspect ratio, full width if it fits, centred on
    ``center_row`` (default: the image centre) and clamped to the image. -> (top, left, h, w)."""
    H, W = src_hw
    oh, ow = out_hw
    w = W
    h = int(round(W * oh / ow))
    if h > H:  # source is wider than tall relative to the output: use full height
        h = H
        w = int(round(H * ow / oh))
    cr = H / 2 if center_row is None else float(center_row)
    top = int(round(min(max(cr - h / 2, 0), H - h)))
    left = (W - w) // 2
    return top, left, h, w


def crop_resize(frame: np.ndarray, box: tuple[int, int, int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H,W,3] -> uint8 [oh,ow,3]: crop ``box`` then area-resize."""
    top, left, h, w = box
    crop = frame[top:top + h, left:left + w]
    return cv2.resize(crop, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)


def camera_after_crop(fx: float, fy: float, cx: float, cy: float,
                      box: tuple[int, int, int, int], out_hw: tuple[int, int]) -> dict:
    """Pinhole intrinsics after cropping ``box`` and resizing to ``out_hw``."""
    top, left, h, w = box
    sx, sy = out_hw[1] / w, out_hw[0] / h
    return dict(fx=fx * sx, fy=fy * sy, cx=(cx - left) * sx, cy=(cy - top) * sy,
                width=int(out_hw[1]), height=int(out_hw[0]))


def iter_video(path: str | Path) -> Iterator[np.ndarray]:
    """Decode any video OpenCV/FFmpeg can read (container and codec probed from the bytes, so a
    raw HEVC stream named ``.hevc`` works); yields uint8 RGB [H,W,3] frames."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: video file not found")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise SourceError(f"{path}: unreadable video (OpenCV/FFmpeg could not open it)")
        n = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            n += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if n == 0:
            raise SourceError(f"{path}: unreadable video (no frame could be decoded)")
    finally:
        cap.release()


def read_video(path: str | Path, transform: Callable[[np.ndarray], np.ndarray] | None = None,
               max_frames: int | None = None) -> np.ndarray:
    """Decode a whole video into uint8 [T,h,w,3], applying ``transform`` per frame as it goes
    (so a full-resolution minute never sits in memory)."""
    out = []
    for i, f in enumerate(iter_video(path)):
        if max_frames is not None and i >= max_frames:
            break
        out.append(transform(f) if transform else f)
    return np.stack(out).astype(np.uint8, copy=False)


def video_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a video's frames, from its first frame."""
    for f in iter_video(path):
        return f.shape[0], f.shape[1]
    raise SourceError(f"{path}: unreadable video")


def sanitize_id(text: str) -> str:
    """A webdataset-safe segment id: letters, digits, '_' and '-' only (no dots)."""
    s = re.sub(r"[^A-Za-z0-9_\-]+", "_", str(text)).strip("_")
    return s or "segment"


# Top-level names the product folders had before they installed as ``drivegpt.<name>``.
_OLD_TOP_LEVEL = ("data", "sim", "rl", "export")


def import_path(spec: str):
    """``"package.module:attr"`` -> the attribute (SourceError naming the spec otherwise)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise SourceError(f"import path {spec!r}: expected 'package.module:attribute'")
    mod, attr = spec.split(":", 1)
    if mod.split(".")[0] in _OLD_TOP_LEVEL:  # configs written before the drivegpt namespace
        mod = f"drivegpt.{mod}"
    try:
        obj = importlib.import_module(mod)
    except ImportError as e:
        raise SourceError(f"import path {spec!r}: cannot import module {mod!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SourceError(f"import path {spec!r}: module {mod!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
