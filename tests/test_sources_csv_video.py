"""Generic video + CSV source: conversion and bad input."""

import cv2
import numpy as np
import pytest

from drivegpt.data.schema import Cause
from drivegpt.data.sources.common import SourceError
from drivegpt.data.sources.csv_video import CsvVideoSource, load_csv_video

T, FPS = 12, 20.0


def write_video(path, n=T, size=(80, 60)):
    tmp = path.with_name("tmp_writer.mp4")
    w = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), FPS, size)
    for t in range(n):
        img = np.full((size[1], size[0], 3), 20 * t % 255, np.uint8)
        w.write(img)
    w.release()
    tmp.rename(path)
    return path


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    return path


def circle_rows():
    """World poses on a 10 m/s, 20 m-radius left circle; engaged with a STEER disengagement at 7."""
    rows = []
    for t in range(T):
        th = 0.5 * t / FPS  # yaw rate 0.5 rad/s
        x, y = 20 * np.sin(th), 20 * (1 - np.cos(th))
        cause = "STEER" if t == 7 else ("2" if t == 3 else "")
        rows.append([t / FPS, x, y, th, 10.0, 1 if t < 8 else 0, cause])
    return rows


def test_world_pose_csv(tmp_path):
    video = write_video(tmp_path / "drive_01.mp4")
    write_csv(tmp_path / "drive_01.csv", ["time", "x", "y", "yaw", "speed", "engaged", "disengage"], circle_rows())
    seg = load_csv_video(video, height=16, width=32)
    assert seg.frames.shape == (T, 16, 32, 3) and seg.meta["segment_id"] == "drive_01"
    dth = 0.5 / FPS
    np.testing.assert_allclose(seg.rel_pose[:-1, 0], 20 * np.sin(dth), atol=1e-5)
    np.testing.assert_allclose(seg.rel_pose[:-1, 1], 20 * (1 - np.cos(dth)), atol=1e-5)
    np.testing.assert_allclose(seg.rel_pose[:-1, 5], dth, atol=1e-6)
    assert seg.disengage[7] == Cause.STEER and seg.disengage[3] == Cause.BRAKE
    assert seg.engaged.sum() == 8 and (seg.disengage != 0).sum() == 2
    assert seg.meta["fps"] == pytest.approx(FPS)
    # frames: grey levels 20*t survive the mp4v round trip
    np.testing.assert_allclose(seg.frames.reshape(T, -1).mean(1), 20 * np.arange(T), atol=4)


def test_relative_pose_csv_composes_world_and_speed(tmp_path):
    video = write_video(tmp_path / "rel.avi")
    rows = [[t / FPS, 0.5, 0.0, 0.01] for t in range(T)]  # 0.5 m and 0.01 rad per frame
    write_csv(tmp_path / "rel.csv", ["time", "dx", "dy", "dyaw"], rows)
    src = CsvVideoSource(tmp_path, height=16, width=32)
    assert src.n_items == 1
    seg = src.make_item(0)
    np.testing.assert_allclose(seg.world_pose[:, 5], 0.01 * np.arange(T), atol=1e-6)
    np.testing.assert_allclose(seg.world_pose[1, :2], [0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(seg.world_pose[2, :2], [0.5 + 0.5 * np.cos(0.01), 0.5 * np.sin(0.01)], atol=1e-6)
    np.testing.assert_allclose(seg.speed, 10.0, atol=1e-4)  # 0.5 m per 50 ms
    assert not seg.engaged.any() and np.all(seg.rel_pose[-1] == 0)


@pytest.mark.parametrize("header,rows,match", [
    (["time", "x", "y", "speed"], [[0, 0, 0, 1]], r"bad\.csv: missing column\(s\) yaw \(give relative"),
    (["time", "speed"], [[0, 1]], r"bad\.csv: missing column\(s\) dx, dy, dyaw"),
    (["x", "y", "yaw"], [[0, 0, 0]], r"bad\.csv: missing column\(s\) time"),
    (["time", "x", "y", "yaw"], [[t / FPS, "nan" if t == 4 else t, 0, 0] for t in range(T)],
     r"bad\.csv: row 6, column 'x': value is nan"),
    (["time", "x", "y", "yaw"], [[t / FPS, "abc" if t == 2 else t, 0, 0] for t in range(T)],
     r"bad\.csv: row 4, column 'x': 'abc' is not a number"),
    (["time", "x", "y", "yaw", "engaged", "disengage"], [[t / FPS, t, 0, 0, 0, "GAS" if t == 5 else 0] for t in range(T)],
     r"bad\.csv: row 7, column 'disengage': a disengagement on a row where engaged is false"),
    (["time", "x", "y", "yaw", "engaged", "disengage"], [[t / FPS, t, 0, 0, 1, "WOBBLE" if t == 5 else 0] for t in range(T)],
     r"bad\.csv: row 7, column 'disengage': unknown disengage cause 'WOBBLE'"),
    (["time", "x", "y", "yaw"], [[0.05 * (t if t != 3 else 1), t, 0, 0] for t in range(T)],
     r"bad\.csv: row 5, column 'time': not strictly increasing"),
    (["time", "x", "y", "yaw"], [[t / FPS, t, 0, 0] for t in range(T - 2)],
     r"bad\.csv: 10 rows but video .*bad\.mp4 has more than 10 frames"),
    (["time", "x", "y", "yaw"], [[t / FPS, t, 0, 0] for t in range(T + 3)],
     r"bad\.csv: 15 rows but video .*bad\.mp4 has 12 frames"),
])
def test_bad_csv_names_file_row_and_column(tmp_path, header, rows, match):
    video = write_video(tmp_path / "bad.mp4")
    write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(SourceError, match=match):
        load_csv_video(video, height=16, width=32)


def test_unreadable_or_missing_video(tmp_path):
    write_csv(tmp_path / "junk.csv", ["time", "x", "y", "yaw"], [[t / FPS, t, 0, 0] for t in range(T)])
    (tmp_path / "junk.mp4").write_bytes(b"garbage" * 50)
    with pytest.raises(SourceError, match=r"junk\.mp4: unreadable video"):
        load_csv_video(tmp_path / "junk.mp4")
    with pytest.raises(SourceError, match=r"nothere\.mp4: video file not found"):
        load_csv_video(tmp_path / "nothere.mp4", tmp_path / "junk.csv")
    with pytest.raises(SourceError, match=r"nocsv\.csv: CSV file not found"):
        load_csv_video(tmp_path / "junk.mp4", tmp_path / "nocsv.csv")


def test_csv_saved_with_a_utf8_bom_is_accepted(tmp_path):
    video = write_video(tmp_path / "bom.mp4")
    header = ["time", "x", "y", "yaw", "speed", "engaged", "disengage"]
    text = ",".join(header) + "\n" + "\n".join(",".join(str(v) for v in r) for r in circle_rows()) + "\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's "CSV UTF-8"
    seg = load_csv_video(video, height=16, width=32)  # before: missing column(s) time; header ['\ufefftime', ...]
    assert seg.times[0] == 0.0 and seg.meta["fps"] == pytest.approx(FPS)
