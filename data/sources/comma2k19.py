"""comma2k19 segment directories -> fleet-log Segments.

A segment directory (``Chunk_k/<route>/<n>/``) holds ``video.hevc`` (1164x874 road camera,
20 Hz, focal ~910 px) and ``global_pose/``:
``frame_times`` [T] s, ``frame_positions`` [T,3] ECEF m, ``frame_orientations`` [T,4]
quaternion (w, x, y, z) rotating camera-frame vectors into ECEF (camera axes forward, right,
down: ``rot_from_quat(q) = ecef_from_camera``, as comma's own examples use it),
``frame_velocities`` [T,3] ECEF m/s. Arrays are ``.npy`` files or numpy-saved files without
an extension (comma2k19 ships them extensionless).

Conversion (schema: x forward, y left, z up):
- ego rotation ``ecef_from_ego = ecef_from_camera @ diag(1, -1, -1)`` (right->left, down->up);
- world frame: local ENU (east, north, up) tangent plane at the first position (WGS84), so
  ``world_pose`` yaw is the heading counter-clockwise from east and z is up;
- ``rel_pose`` from consecutive poses (data.sources.common.rel_from_world);
- ``speed``: the forward (x) component of the velocity in the ego frame;
- ``engaged`` False everywhere and ``disengage`` 0 (comma2k19 records no engagement).

Frames: commaVQ feeds its tokenizer 128x256 crops of the road camera. We take the largest
2:1 band of the 1164x874 image (full width, 582 rows), centred on the principal-point row
(cy = 437, near the horizon: rows 146..727, dropping sky at the top and the hood at the
bottom), and area-resize it to the configured size (128x256 by default; 4.55x downscale).
Camera intrinsics in ``meta.camera`` are adjusted to the crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drivegpt.data.schema import Segment, validate
from drivegpt.data.sources.common import (SourceError, camera_after_crop, crop_box, crop_resize,
                                 quat_to_matrix, read_video, rel_from_world, sanitize_id,
                                 world_pose_array)

POSE_DIR = "global_pose"
POSE_FILES = ("frame_times", "frame_positions", "frame_orientations", "frame_velocities")
POSE_SHAPES = {"frame_times": (), "frame_positions": (3,), "frame_orientations": (4,),
               "frame_velocities": (3,)}
# comma2k19 road camera (EON): 1164x874, focal 910 px, principal point at the centre.
CAMERA = dict(fx=910.0, fy=910.0, cx=582.0, cy=437.0, width=1164, height=874)
CAMERA_TO_EGO = np.diag([1.0, -1.0, -1.0])  # (fwd, right, down) -> (fwd, left, up)

WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3


def ecef_to_geodetic(p: np.ndarray) -> tuple[float, float, float]:
    """ECEF (x, y, z) m -> (lat rad, lon rad, alt m) on WGS84 (fixed-point iteration)."""
    x, y, z = (float(v) for v in p)
    lon = np.arctan2(y, x)
    r = np.hypot(x, y)
    lat = np.arctan2(z, r * (1 - WGS84_E2))
    alt = 0.0
    for _ in range(10):
        n = WGS84_A / np.sqrt(1 - WGS84_E2 * np.sin(lat) ** 2)
        alt = r / np.cos(lat) - n
        lat = np.arctan2(z, r * (1 - WGS84_E2 * n / (n + alt)))
    return float(lat), float(lon), float(alt)


def enu_from_ecef(lat: float, lon: float) -> np.ndarray:
    """Rotation [3,3] whose rows are the east, north, up unit vectors in ECEF at (lat, lon)."""
    sl, cl, so, co = np.sin(lat), np.cos(lat), np.sin(lon), np.cos(lon)
    return np.array([[-so, co, 0.0],
                     [-sl * co, -sl * so, cl],
                     [cl * co, cl * so, sl]])


def _load_array(seg_dir: Path, name: str) -> np.ndarray:
    base = seg_dir / POSE_DIR / name
    path = base if base.is_file() else base.with_suffix(".npy")
    if not path.is_file():
        raise SourceError(f"{seg_dir}: missing {POSE_DIR}/{name} (looked for {base} and {base}.npy)")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise SourceError(f"{path}: {name} is not a readable numpy array ({e})") from None
    arr = np.asarray(arr, dtype=np.float64)
    tail = POSE_SHAPES[name]
    if arr.ndim != 1 + len(tail) or arr.shape[1:] != tail:
        raise SourceError(f"{path}: {name} has shape {arr.shape}, expected [T{''.join(f', {d}' for d in tail)}]")
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1))[0, 0])
        raise SourceError(f"{path}: {name} contains NaN or inf (first at row {row})")
    if name == "frame_orientations":
        norm = np.linalg.norm(arr, axis=1)
        bad = np.flatnonzero(norm < 1e-6)
        if len(bad):
            raise SourceError(f"{path}: {name} row {int(bad[0])} is an all-zero quaternion {arr[bad[0]].tolist()} "
                              f"(not a rotation; {len(bad)} such row(s)): expected unit quaternions (w, x, y, z)")
    return arr


def convert_poses(times: np.ndarray, positions: np.ndarray, quats: np.ndarray,
                  velocities: np.ndarray) -> dict[str, np.ndarray]:
    """comma2k19 global_pose arrays -> schema arrays (times, world_pose, rel_pose, speed)."""
    lat, lon, _ = ecef_to_geodetic(positions[0])
    R_enu_ecef = enu_from_ecef(lat, lon)
    ecef_from_ego = quat_to_matrix(quats) @ CAMERA_TO_EGO  # [T,3,3]
    enu_from_ego = np.einsum("ij,tjk->tik", R_enu_ecef, ecef_from_ego)
    pos_enu = (positions - positions[0]) @ R_enu_ecef.T  # [T,3]
    v_ego = np.einsum("tji,tj->ti", ecef_from_ego, velocities)  # ego_from_ecef @ v
    return dict(
        times=times - times[0],
        world_pose=world_pose_array(pos_enu, enu_from_ego),
        rel_pose=rel_from_world(pos_enu, enu_from_ego),
        speed=v_ego[:, 0],
        origin=np.array([np.degrees(lat), np.degrees(lon)]),
    )


def find_segments(path: str | Path) -> list[Path]:
    """Segment directories under ``path`` (itself, or any directory holding global_pose/)."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if (path / POSE_DIR).is_dir():
        return [path]
    found = sorted(p.parent for p in path.rglob(POSE_DIR) if p.is_dir())
    if not found:
        raise SourceError(f"{path}: no comma2k19 segment directories (none has a {POSE_DIR}/ folder)")
    return found


def segment_id_for(seg_dir: Path) -> str:
    """``<route>_<n>`` from ``.../<dongle>|<date>/<n>`` (dots and '|' replaced)."""
    parts = seg_dir.resolve().parts[-2:]
    return sanitize_id("_".join(parts))


def load_segment(seg_dir: str | Path, height: int = 128, width: int = 256,
                 video: str = "video.hevc", fps: float = 20.0, max_frame_mismatch: int = 2,
                 center_row: float | None = CAMERA["cy"]) -> Segment:
    """Read one comma2k19 segment directory into a validated Segment."""
    seg_dir = Path(seg_dir)
    arrs = {name: _load_array(seg_dir, name) for name in POSE_FILES}
    T = arrs["frame_times"].shape[0]
    for name, a in arrs.items():
        if a.shape[0] != T:
            raise SourceError(f"{seg_dir / POSE_DIR / name}: {name} has {a.shape[0]} rows, "
                              f"frame_times has {T}")
    conv = convert_poses(arrs["frame_times"], arrs["frame_positions"], arrs["frame_orientations"],
                         arrs["frame_velocities"])

    vpath = seg_dir / video
    box = None
    src_hw = None
    out_hw = (int(height), int(width))

    def transform(frame):
        nonlocal box, src_hw
        if box is None:
            src_hw = frame.shape[:2]
            # scale the principal-point row with the video size (tests use small videos)
            cr = None if center_row is None else center_row * frame.shape[0] / CAMERA["height"]
            box = crop_box(frame.shape[:2], out_hw, cr)
        return crop_resize(frame, box, out_hw)

    frames = read_video(vpath, transform, max_frames=T + max_frame_mismatch + 1)
    n = frames.shape[0]
    if abs(n - T) > max_frame_mismatch:
        raise SourceError(f"{vpath}: video has {n} frames but {POSE_DIR}/frame_times has {T} "
                          f"(more than max_frame_mismatch={max_frame_mismatch} apart)")
    T = min(n, T)
    frames = frames[:T]
    rel = conv["rel_pose"][:T].copy()
    rel[-1] = 0.0
    # intrinsics of the decoded video, scaled from the EON camera to its actual size
    s = src_hw[1] / CAMERA["width"]
    camera = camera_after_crop(CAMERA["fx"] * s, CAMERA["fy"] * s, CAMERA["cx"] * s,
                               CAMERA["cy"] * s, box, out_hw)
    seg = Segment(
        frames=frames,
        rel_pose=rel.astype(np.float32),
        world_pose=conv["world_pose"][:T].astype(np.float32),
        speed=conv["speed"][:T].astype(np.float32),
        engaged=np.zeros(T, dtype=bool),
        disengage=np.zeros(T, dtype=np.int8),
        times=conv["times"][:T].astype(np.float64),
        meta=dict(source="comma2k19", segment_id=segment_id_for(seg_dir), fps=float(fps),
                  camera=camera, vehicle={"model": "unknown (comma2k19 fleet)"},
                  path=str(seg_dir), crop=dict(zip(("top", "left", "height", "width"), box)),
                  origin_lat_lon_deg=conv["origin"].tolist(),
                  world_frame="local ENU at the first frame (x east, y north, z up)"),
    )
    return validate(seg, where=str(seg_dir))


class Comma2k19Source:
    """Indexed source over comma2k19 segment directories under ``path`` (one Segment each)."""

    def __init__(self, path: str | Path, height: int = 128, width: int = 256,
                 video: str = "video.hevc", fps: float = 20.0, max_frame_mismatch: int = 2):
        self.dirs = find_segments(path)
        self.kw = dict(height=height, width=width, video=video, fps=fps,
                       max_frame_mismatch=max_frame_mismatch)
        self.n_items = len(self.dirs)

    def make_item(self, i: int) -> Segment:
        return load_segment(self.dirs[i], **self.kw)
