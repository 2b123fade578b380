"""The camera model (drivegpt.data.camera): ground-plane re-projection for a moved car, checked
against the road world's own render from the moved pose, and its errors."""


import cv2
import numpy as np
import pytest
import torch

from drivegpt.data.camera import Camera, reproject
from roadworld_views import ROAD, moved_views, psnr


def _warp(frame, cam, dx, dy, dyaw):
    v, u = torch.meshgrid(torch.arange(cam.height, dtype=torch.float64), torch.arange(cam.width, dtype=torch.float64),
                          indexing="ij")
    mx, my = reproject(cam, u, v, dx, dy, dyaw)
    return cv2.remap(frame, mx.numpy().astype(np.float32), my.numpy().astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def test_no_move_is_the_identity_and_moves_go_the_right_way():
    cam = Camera(fx=91.4, fy=91.4, cx=63.5, cy=31.5, width=128, height=64, pitch_down_deg=1.0)
    v, u = torch.meshgrid(torch.arange(64.0), torch.arange(128.0), indexing="ij")
    mx, my = reproject(cam, u, v, 0.0, 0.0, 0.0)
    assert (mx - u).abs().max() < 1e-3 and (my - v).abs().max() < 1e-3
    # forward: the sky stays, a road pixel low in the new frame was higher (farther) before
    mx, my = reproject(cam, u, v, 5.0, 0.0, 0.0)
    assert (my[:20] - v[:20]).abs().max() < 1e-3
    assert (my[60] < v[60] - 3).all()
    assert mx[60, 10] > u[60, 10] + 3 and mx[60, 117] < u[60, 117] - 3  # the road spreads outwards
    # a left turn: the whole picture came from the left (things move right in the new frame)
    mx, _ = reproject(cam, u, v, 0.0, 0.0, 0.05)
    assert (mx < u - 0.9 * cam.fx * 0.05).all()
    # batched moves broadcast against the pixel grid
    mx, my = reproject(cam, u, v, torch.tensor([0.0, 5.0])[:, None, None], 0.0, 0.0)
    assert mx.shape == (2, 64, 128) and (my[0] - v).abs().max() < 1e-3


def test_reprojection_matches_the_road_world_render_from_the_moved_car():
    """The road world renders the view from any pose: the previous frame re-projected by a move
    (sideways, turned, and forward + sideways + turned, as one frame at 5 Hz) must be far closer
    to the true view from the moved car than the previous frame itself is. A move straight ahead
    hardly changes an even road surface (the previous frame itself is often closest); there the
    true move must beat the mirrored and the doubled one."""
    gains, ahead = [], []
    for base, cam, (dx, dy, dyaw), true in moved_views(((4.0, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, -0.03),
                                                        (4.0, -0.3, 0.02))):
        got = psnr(_warp(base, cam, dx, dy, dyaw), true, ROAD)
        if dy == dyaw == 0.0:
            ahead.append(got - max(psnr(_warp(base, cam, -dx, 0.0, 0.0), true, ROAD),
                                   psnr(_warp(base, cam, 2 * dx, 0.0, 0.0), true, ROAD)))
        else:
            gains.append(got - psnr(base, true, ROAD))
    assert min(ahead) > 0.5, ahead
    assert min(gains) > 2.0, gains
    assert np.mean(gains) > 5.0, gains


def test_bad_camera_names_the_key():
    with pytest.raises(ValueError, match=r"meta.camera: missing \['fy'\]"):
        Camera.from_meta({"fx": 1.0, "cx": 0.0, "cy": 0.0, "width": 8, "height": 4})
    with pytest.raises(ValueError, match="world_model.camera: fx, fy, mount_height"):
        Camera.from_meta({"fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0, "width": 8, "height": 4, "mount_height": 0},
                         where="world_model.camera")
    assert Camera.from_meta({"fx": 1, "fy": 1, "cx": 0, "cy": 0, "width": 8, "height": 4, "hfov_deg": 70}).width == 8
