"""Viewpoint augmentation for BC (drivegpt.rl.viewpoint): re-rendered recovery views and the
corrective label, checked against the road world's own render from the displaced car."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from drivegpt.data.camera import Camera
from drivegpt.rl.viewpoint import ViewpointAugment, recovery_curvature, shift_frames, shift_maps
from drivegpt.sim.vehicle import ACTION_SCALE
from roadworld_views import ROAD, moved_views, psnr


def test_no_shift_is_the_identity_map():
    cam = Camera(fx=91.4, fy=91.4, cx=63.5, cy=31.5, width=128, height=64, pitch_down_deg=1.0)
    mx, my = shift_maps(cam, 0.0, 0.0)
    v, u = np.mgrid[0:64, 0:128]
    assert np.abs(mx - u).max() < 1e-3 and np.abs(my - v).max() < 1e-3


def test_shifted_view_matches_the_road_world_render_from_the_displaced_car():
    """The road world renders the view from any pose: the warped frame must be far closer to the
    true view from a car 0.6 m to the side (or turned 0.03 rad) than the unwarped frame is."""
    gains = []
    for base, cam, (_, dy, dyaw), true in moved_views(((0.0, 0.6, 0.0), (0.0, -0.6, 0.0), (0.0, 0.0, 0.03))):
        warp = shift_frames(base, cam, dy, dyaw)
        gains.append(psnr(warp, true, ROAD) - psnr(base, true, ROAD))
    assert min(gains) > 3.0, gains
    assert np.mean(gains) > 6.0, gains


def test_recovery_curvature_is_the_logged_one_on_the_line_and_steers_back_off_it():
    k = torch.tensor([0.0, 0.004, -0.01])
    v = torch.tensor([20.0, 15.0, 10.0])
    zero = torch.zeros(3)
    assert torch.allclose(recovery_curvature(k, v, zero, zero), k, atol=1e-6)
    left = recovery_curvature(k, v, torch.full((3,), 0.5), zero)   # car 0.5 m left of the path
    right = recovery_curvature(k, v, torch.full((3,), -0.5), zero)
    assert (left < k).all() and (right > k).all()
    turned = recovery_curvature(k, v, zero, torch.full((3,), 0.05))  # heading 0.05 rad left of it
    assert (turned < k).all()
    # a 0.5 m offset with a 20 m preview: pure pursuit's 2 dy / L^2 = 0.0025 1/m back
    assert recovery_curvature(torch.zeros(1), torch.tensor([20.0]), torch.tensor([0.5]), torch.zeros(1)).item() \
        == pytest.approx(-2 * 0.5 / (20.0 ** 2 + 0.5 ** 2), rel=1e-4)


def test_augment_changes_frames_and_curvature_together_and_prob_zero_is_identity():
    cam = Camera(fx=91.4, fy=91.4, cx=63.5, cy=31.5, width=128, height=64)
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 255, (12, 2, 64, 128, 3), dtype=torch.uint8, generator=g)
    frames[..., 40:, :, :] = 90  # a flat road below the horizon
    frames[..., 40:, 60:63, :] = 250  # a lane line
    speed = torch.full((12,), 20.0)
    target = torch.tensor([[0.1, 0.2]] * 12)
    same_f, same_t = ViewpointAugment(cam, prob=0.0)(frames, speed, target, generator=g)
    assert torch.equal(same_f, frames) and torch.equal(same_t, target)
    aug = ViewpointAugment(cam, prob=1.0, max_offset_m=1.0, max_yaw=0.0)
    f2, t2 = aug(frames, speed, target, generator=torch.Generator().manual_seed(1))
    assert f2.shape == frames.shape and f2.dtype == torch.uint8
    assert torch.equal(t2[:, 1], target[:, 1])  # accel untouched
    moved = (t2[:, 0] - target[:, 0]).abs() > 1e-4
    assert moved.all()
    # the lane line moves right in the image exactly when the car moved left (label steers right)
    checked = 0
    for i in range(12):
        if (t2[i, 0] - target[i, 0]).abs() < 0.015:  # under ~0.2 m: a shift under a pixel or two
            continue
        col = f2[i, 0, 60].float().mean(-1).argmax().item()
        assert (col > 62) if t2[i, 0] < target[i, 0] else (col < 60), (i, col, t2[i])
        checked += 1
    assert checked >= 4
    # at most pure pursuit's 2 dy / L^2 back (1 m, L = 20 m preview at 20 m/s)
    k = target[:, 0] * ACTION_SCALE[0]
    assert ((t2[:, 0] * ACTION_SCALE[0] - k).abs() <= 2 * 1.0 / 20.0 ** 2 + 1e-4).all()


def test_shards_camera_reads_meta_and_names_what_is_missing(tmp_path):
    from drivegpt.rl.bc import shards_camera

    def write(path, metas):
        with tarfile.open(path, "w") as tar:
            for m in metas:
                data = json.dumps(m).encode()
                info = tarfile.TarInfo(f"{m['segment_id']}.meta.json")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    cam = dict(fx=91.4, fy=91.4, cx=63.5, cy=31.5, width=128, height=64, mount_height=1.3)
    write(tmp_path / "a.tar", [{"segment_id": "s0", "camera": cam}, {"segment_id": "s1", "camera": cam}])
    assert shards_camera(str(tmp_path / "a.tar")).mount_height == 1.3
    write(tmp_path / "b.tar", [{"segment_id": "s0", "camera": {"fx": 1.0}}])
    with pytest.raises(ValueError, match=r"segment 's0', key 'camera'.*missing \['fy'"):
        shards_camera(str(tmp_path / "b.tar"))
    write(tmp_path / "c.tar", [{"segment_id": "s0", "camera": cam}, {"segment_id": "s1", "camera": dict(cam, fx=50.0)}])
    with pytest.raises(ValueError, match="different cameras"):
        shards_camera(str(tmp_path / "c.tar"))


def test_recovery_curvature_cap_keeps_the_correction_comfortable():
    k = torch.tensor([0.0, 0.004])
    v = torch.tensor([25.0, 25.0])
    dy = torch.tensor([1.0, -1.0])
    free = recovery_curvature(k, v, dy, torch.zeros(2))
    capped = recovery_curvature(k, v, dy, torch.zeros(2), max_lat_accel=1.0)
    assert (v ** 2 * free.abs() > 1.0).all()  # 1 m off at 25 m/s: pure pursuit asks for > 1 m/s^2
    # 1 m/s^2 at 25 m/s is 0.0016 1/m; on a curve that already needs more (0.004 1/m = 2.5 m/s^2)
    # the correction may not add to it
    assert torch.allclose(capped, torch.tensor([-0.0016, 0.004]), atol=1e-6)
    assert torch.sign(capped).tolist() == torch.sign(free).tolist()
    # never below what the logged curve itself needs
    big = recovery_curvature(torch.tensor([0.01]), torch.tensor([25.0]), torch.zeros(1), torch.zeros(1),
                             max_lat_accel=1.0)
    assert big.item() == pytest.approx(0.01, rel=1e-4)


def test_settings_errors_name_the_key():
    cam = Camera(fx=91.4, fy=91.4, cx=63.5, cy=31.5, width=128, height=64)
    with pytest.raises(ValueError, match=r"rl.bc.viewpoint: unknown key\(s\) \['offset'\]"):
        ViewpointAugment.from_settings(cam, {"prob": 0.5, "offset": 1.0})
    with pytest.raises(ValueError, match=r"rl.bc.viewpoint.prob: must be in \[0, 1\]"):
        ViewpointAugment.from_settings(cam, {"prob": 1.5})
    aug = ViewpointAugment.from_settings(cam, {"prob": 0.5, "max_offset_m": 1.0, "max_lat_accel": None})
    assert (aug.prob, aug.max_offset_m, aug.max_lat_accel) == (0.5, 1.0, None)


def test_drift_shows_the_history_where_the_heading_error_came_from():
    """With ``drift`` the earlier frames of a turned car's window are shifted less far (it drove
    there along its heading); the decision frame is the same view either way."""
    cam = Camera(fx=91.4, fy=91.4, cx=63.5, cy=31.5, width=128, height=64)
    frames = torch.full((1, 3, 64, 128, 3), 90, dtype=torch.uint8)
    frames[..., 40:, 60:63, :] = 250  # a lane line straight ahead
    speed, target = torch.tensor([20.0]), torch.tensor([[0.0, 0.0]])
    plain = ViewpointAugment(cam, prob=1.0, max_offset_m=1.0, max_yaw=0.05)
    drift = ViewpointAugment.from_settings(cam, {"prob": 1.0, "max_offset_m": 1.0, "max_yaw": 0.05, "drift": True},
                                           frame_dt=0.2)
    f1, t1 = plain(frames, speed, target, generator=torch.Generator().manual_seed(3))
    f2, t2 = drift(frames, speed, target, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2) and torch.equal(f1[0, -1], f2[0, -1])
    # the plain history repeats one view; the drifting one moves the line from frame to frame
    assert torch.equal(f1[0, 0], f1[0, -1])
    cols = [f2[0, j, 60].float().mean(-1).argmax().item() for j in range(3)]
    assert len(set(cols)) > 1, cols
    with pytest.raises(ValueError, match="drift: needs the seconds"):
        ViewpointAugment.from_settings(cam, {"prob": 1.0, "drift": True})
