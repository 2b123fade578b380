"""comma2k19 conversion against a hand-computed drive (no downloads: the test writes the files)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from drivegpt.data.schema import validate
from drivegpt.data.sources.comma2k19 import Comma2k19Source, find_segments, load_segment
from drivegpt.data.sources.common import SourceError

LAT, LON, ALT = np.radians(37.4), np.radians(-122.1), 10.0
FPS, V = 20.0, 10.0  # 10 m/s -> 0.5 m per frame
N_STRAIGHT, N_TURN = 8, 8
OMEGA = 0.5  # rad/s left turn -> 0.025 rad per frame on a 20 m radius
VW, VH = 232, 174  # a 1/5-scale EON frame


def geodetic_to_ecef(lat, lon, alt):
    a, e2 = 6378137.0, 6.69437999014e-3
    n = a / np.sqrt(1 - e2 * np.sin(lat) ** 2)
    return np.array([(n + alt) * np.cos(lat) * np.cos(lon), (n + alt) * np.cos(lat) * np.sin(lon),
                     (n * (1 - e2) + alt) * np.sin(lat)])


def ecef_from_enu(lat, lon):
    east = np.array([-np.sin(lon), np.cos(lon), 0.0])
    north = np.array([-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)])
    up = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    return np.stack([east, north, up], axis=1)  # columns


def quat_from_matrix(R):
    """(w, x, y, z) of a rotation matrix (Shepperd, trace branch is enough away from 180 deg)."""
    w = np.sqrt(max(0.0, 1 + np.trace(R))) / 2
    x = np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2
    y = np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2
    z = np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2
    x = np.copysign(x, R[2, 1] - R[1, 2])
    y = np.copysign(y, R[0, 2] - R[2, 0])
    z = np.copysign(z, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


def hand_drive():
    """A straight stretch heading north-east (ENU yaw 45 deg), then a 20 m-radius left turn.
    Returns the hand-computed relative poses per frame (dx, dy, dyaw), headings and ENU positions."""
    dth = OMEGA / FPS
    R = V / OMEGA
    steps = [(V / FPS, 0.0, 0.0)] * N_STRAIGHT + [(R * np.sin(dth), R * (1 - np.cos(dth)), dth)] * N_TURN
    psi, p = np.radians(45.0), np.zeros(3)
    pos, yaw = [], []
    for dx, dy, dyaw in steps:
        pos.append(p.copy())
        yaw.append(psi)
        c, s = np.cos(psi), np.sin(psi)
        p = p + np.array([c * dx - s * dy, s * dx + c * dy, 0.0])
        psi = psi + dyaw
    pos.append(p.copy())
    yaw.append(psi)
    return np.array(steps), np.array(yaw), np.array(pos)


def write_segment(seg_dir: Path, n_frames=None, video=True, corrupt=None):
    steps, yaw, pos_enu = hand_drive()
    T = len(yaw)
    E = ecef_from_enu(LAT, LON)
    p0 = geodetic_to_ecef(LAT, LON, ALT)
    C = np.diag([1.0, -1.0, -1.0])  # ego (fwd, left, up) <-> camera (fwd, right, down)
    positions = p0 + pos_enu @ E.T
    quats, vels = [], []
    for psi in yaw:
        enu_from_ego = np.array([[np.cos(psi), -np.sin(psi), 0], [np.sin(psi), np.cos(psi), 0], [0, 0, 1]])
        quats.append(quat_from_matrix(E @ enu_from_ego @ C))
        vels.append(E @ (V * np.array([np.cos(psi), np.sin(psi), 0.0])))
    arrays = dict(frame_times=1000.0 + np.arange(T) / FPS, frame_positions=positions,
                  frame_orientations=np.array(quats), frame_velocities=np.array(vels))
    if corrupt:
        corrupt(arrays)
    (seg_dir / "global_pose").mkdir(parents=True)
    for name, a in arrays.items():  # comma2k19 files have no extension
        with open(seg_dir / "global_pose" / name, "wb") as f:
            np.save(f, a)
    if video:
        # No HEVC encoder in OpenCV's wheel: write MPEG-4 and name it video.hevc; the reader
        # probes the container/codec from the bytes, as it does for the real raw HEVC stream.
        w = cv2.VideoWriter(str(seg_dir / "tmp.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (VW, VH))
        for t in range(T if n_frames is None else n_frames):
            img = np.full((VH, VW, 3), 128, np.uint8)
            img[:24] = (0, 0, 255)  # BGR red sky band: outside the crop (rows 29..144)
            img[150:] = (255, 0, 0)  # blue hood band: outside the crop
            cv2.putText(img, str(t), (100, 90), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
            w.write(img)
        w.release()
        (seg_dir / "tmp.mp4").rename(seg_dir / "video.hevc")
    return steps, yaw


def test_hand_computed_drive(tmp_path):
    seg_dir = tmp_path / "Chunk_1" / "b0c9d2329ad1606b|2018-07-27--06-03-57" / "3"
    steps, yaw = write_segment(seg_dir)
    seg = load_segment(seg_dir, height=32, width=64)
    T = len(yaw)
    assert len(seg) == T and seg.frames.shape == (T, 32, 64, 3)
    # relative poses: straight 0.5 m forward, then the arc's chord and 0.025 rad yaw per frame
    np.testing.assert_allclose(seg.rel_pose[:-1, 0], steps[:, 0], atol=1e-4)
    np.testing.assert_allclose(seg.rel_pose[:-1, 1], steps[:, 1], atol=1e-4)
    np.testing.assert_allclose(seg.rel_pose[:-1, 5], steps[:, 2], atol=1e-5)
    np.testing.assert_allclose(seg.rel_pose[:-1, 2:5], 0.0, atol=1e-4)  # flat, no roll/pitch
    assert np.all(seg.rel_pose[-1] == 0)
    # world pose in local ENU: heading north-east, turning left; starts at the origin
    np.testing.assert_allclose(seg.world_pose[:, 5], yaw, atol=1e-5)
    np.testing.assert_allclose(seg.world_pose[N_STRAIGHT, :2], [4 / np.sqrt(2)] * 2, atol=1e-3)
    np.testing.assert_allclose(seg.world_pose[0, :5], 0.0, atol=1e-6)
    np.testing.assert_allclose(seg.speed, V, atol=1e-4)
    np.testing.assert_allclose(np.diff(seg.times), 1 / FPS, atol=1e-9)
    assert seg.times[0] == 0.0
    assert not seg.engaged.any() and not seg.disengage.any()
    sid = seg.meta["segment_id"]
    assert "." not in sid and "|" not in sid and sid.endswith("_3")
    # the crop drops the red sky band and the blue hood band (2:1 band centred on cy)
    f = seg.frames.astype(int)
    assert (f[..., 0] - f[..., 2] < 60).all() and (f[..., 2] - f[..., 0] < 60).all()
    assert seg.meta["crop"] == {"top": 29, "left": 0, "height": 116, "width": 232}
    cam = seg.meta["camera"]  # focal 910 px at 1164 wide -> 910 * 64/1164 at 64 wide
    assert cam["fx"] == pytest.approx(910 * 64 / 1164) and cam["width"] == 64
    validate(seg)
    src = Comma2k19Source(tmp_path, height=32, width=64)
    assert src.n_items == 1 and src.make_item(0).meta["segment_id"] == sid


def test_bad_inputs_name_file_and_key(tmp_path):
    def nan_row(a):
        a["frame_positions"][5, 1] = np.nan

    write_segment(tmp_path / "nan", corrupt=nan_row)
    with pytest.raises(SourceError, match=r"frame_positions.*NaN.*row 5"):
        load_segment(tmp_path / "nan", 32, 64)

    write_segment(tmp_path / "short", n_frames=10)
    with pytest.raises(SourceError, match=r"video\.hevc.*10 frames.*frame_times has 17"):
        load_segment(tmp_path / "short", 32, 64)

    write_segment(tmp_path / "novel", video=False)
    (tmp_path / "novel" / "video.hevc").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SourceError, match=r"novel/video\.hevc: unreadable video"):
        load_segment(tmp_path / "novel", 32, 64)

    write_segment(tmp_path / "missing")
    (tmp_path / "missing" / "global_pose" / "frame_velocities").unlink()
    with pytest.raises(SourceError, match=r"missing global_pose/frame_velocities"):
        load_segment(tmp_path / "missing", 32, 64)

    def bad_len(a):
        a["frame_velocities"] = a["frame_velocities"][:-3]

    write_segment(tmp_path / "len", corrupt=bad_len)
    with pytest.raises(SourceError, match=r"frame_velocities has 14 rows, frame_times has 17"):
        load_segment(tmp_path / "len", 32, 64)

    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty: no comma2k19 segment"):
        find_segments(tmp_path / "empty")


def test_all_zero_quaternion_is_named_in_the_input_file(tmp_path):
    def zero_quat(a):
        a["frame_orientations"][6] = 0.0

    write_segment(tmp_path / "zq", corrupt=zero_quat)
    # before: accepted, then reported as NaN in the derived rel_pose (not in the input file)
    with pytest.raises(SourceError, match=r"zq/global_pose/frame_orientations: frame_orientations row 6 is an "
                                          r"all-zero quaternion"):
        load_segment(tmp_path / "zq", 32, 64)
