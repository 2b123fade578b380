"""Renderer geometry against the pinhole math, on a straight road."""

import math

import numpy as np
import pytest

from drivegpt.sim.roadworld import Camera, Renderer, RoadWorldConfig
from drivegpt.sim.roadworld.road import Look, Road, Scenery


@pytest.fixture(scope="module")
def straight():
    cfg = RoadWorldConfig()
    rng = np.random.default_rng(1)
    road = Road(rng, cfg.road, 600.0, nodes=(np.array([0.0, 600.0]), np.zeros(2)))
    cam = Camera(cfg.camera, 128, 256)
    r = Renderer(cam, road, Scenery(rng, cfg.scenery, road), Look(rng, cfg.scenery), cfg.road)
    return cfg, road, cam, r


def _ego(road, lane, s=100.0, yaw=0.0):
    return np.array([s, float(road.lane_center(lane)), yaw])  # straight road along +x


def test_edge_line_lands_where_pinhole_math_says(straight):
    cfg, road, cam, r = straight
    pose = _ego(road, 0)
    img, mask = r.render(pose, 100.0, None, mask=True)
    assert img.shape == (128, 256, 3) and img.dtype == np.uint8 and mask.dtype == bool
    fx = 256 / 2 / math.tan(math.radians(cfg.camera.hfov_deg) / 2)
    p, h = math.radians(cfg.camera.pitch_down_deg), cfg.camera.mount_height
    b = -road.half_width + cfg.road.line_width / 2  # centre of the solid right edge line
    left_of_cam = b - pose[1]
    for row in (80, 95, 110):
        yn = (row - 64) / fx  # normalized image coordinate of the row (pixel centres at integers)
        depth = h / (math.sin(p) + yn * math.cos(p))  # camera z of the ground point on this row
        u_pred = 128 - fx * left_of_cam / depth
        cols = np.flatnonzero(mask[row])
        near = cols[np.abs(cols - u_pred) < 4]
        assert len(near), (row, u_pred, cols)
        assert abs(near.mean() - u_pred) < 1.0, (row, near.mean(), u_pred)
    # lane markings are white-ish in the frame, asphalt between them is not
    assert img[100][mask[100]].mean() > img[100][~mask[100]].mean()


def test_yaw_left_moves_vanishing_point_right(straight):
    cfg, road, cam, r = straight
    fx = cam.fx

    def far_marking_column(yaw):
        _, mask = r.render(_ego(road, 0, yaw=yaw), 100.0, None, mask=True)
        rows = mask[r.hz + 2: r.hz + 8]
        return np.argwhere(rows)[:, 1].mean()

    yaw = math.radians(4)
    shift = far_marking_column(yaw) - far_marking_column(0.0)
    assert shift > 0  # yaw left -> the scene (and the vanishing point) moves right
    assert abs(shift - fx * math.tan(yaw)) < 3.0


def test_vehicle_ahead_is_drawn_and_occludes_markings(straight):
    cfg, road, cam, r = straight
    pose = _ego(road, 1)
    lane_lat = float(road.lane_center(1))
    veh = np.array([[100.0 + 15.0, lane_lat, 20.0, 4.5]], np.float32)
    img0, m0 = r.render(pose, 100.0, None, mask=True)
    img1, m1 = r.render(pose, 100.0, veh, mask=True)
    diff = np.abs(img1.astype(int) - img0.astype(int)).sum(-1) > 0
    cols = np.flatnonzero(diff.any(0))
    # the car (1.84 m wide, rear face ~15 m ahead of the camera) is centred on the camera axis
    assert abs(cols.mean() - 128) < 6
    # markings run behind the car (the far lane lines converge behind it): the car hides them
    behind = m0 & diff
    assert behind.sum() >= 20, behind.sum()  # measured 42 marking pixels under the car's outline
    assert not (m1 & diff).any()  # none of them shows through the car
    assert not (m1 & ~m0).any() and m1.sum() == m0.sum() - behind.sum()  # and nothing else changed


def test_horizon_hills_land_at_their_elevation(straight):
    cfg, road, cam, r = straight
    sc = r.scenery
    saved = sc.s, sc.corners
    sc.s, sc.corners = np.zeros(0), np.zeros((0, 8, 3))  # nothing in front of the hills
    try:
        img = r.render(_ego(road, 0), 100.0, None)
    finally:
        sc.s, sc.corners = saved
    hill = np.array(r.hill_rgb)
    col = 128  # the optical axis: azimuth = yaw = 0
    e = r.look.hill_elev[0]
    v = cam.cy - cam.fy * math.tan(e + cam.pitch)
    assert np.abs(img[int(math.floor(v)) - 1, col] - hill).sum() > 6  # sky above the ridge
    assert np.abs(img[int(math.ceil(v)) + 1, col] - hill).sum() <= 3  # hill below it
    assert v < r.hz - 1
