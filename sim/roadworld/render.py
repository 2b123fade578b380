"""Pinhole dashcam renderer: OpenCV polygon fills of vectorized numpy projections.

Per frame: copy a precomputed sky/ground background, draw distant hills (a silhouette that
slides with yaw), the road ribbon (shoulders, asphalt, edge lines) as strips between
cross-sections sampled densely near the car and sparsely far away, the dashed lane lines,
then fog the ground rows (flat world: each row below the horizon is one ground distance),
then roadside boxes and vehicles far-to-near (silhouette in the side shade, near face in
the front shade; vehicles get a rear window and tail lights). Optional lane-marking mask.

Camera frame (OpenCV): x right, y down, z forward. The camera sits ``mount_x`` ahead of
the rear axle at ``mount_height``, pitched down by ``pitch_down_deg``. Points are drawn
with 4 bits of sub-pixel precision (``shift=4``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .config import CameraConfig
from .road import Look, Road, Scenery, box_corners

SHIFT = 4
ONE = 1 << SHIFT


class Camera:
    """Pinhole intrinsics and mount; ``project`` maps ego-frame points to pixels."""

    def __init__(self, cfg: CameraConfig, height: int, width: int):
        self.cfg = cfg
        self.height, self.width = int(height), int(width)
        self.fx = self.fy = width / 2 / math.tan(math.radians(cfg.hfov_deg) / 2)
        self.cx, self.cy = width / 2, height / 2
        self.pitch = math.radians(cfg.pitch_down_deg)
        self.cp, self.sp = math.cos(self.pitch), math.sin(self.pitch)
        self.horizon_v = self.cy - self.fy * math.tan(self.pitch)  # row of the horizon

    def intrinsics(self) -> dict:
        c = self.cfg
        return dict(fx=self.fx, fy=self.fy, cx=self.cx, cy=self.cy, width=self.width,
                    height=self.height, mount_height=c.mount_height, mount_x=c.mount_x,
                    pitch_down_deg=c.pitch_down_deg, hfov_deg=c.hfov_deg)

    def to_cam(self, pose, X, Y, Z):
        """World points -> camera (x right, y down, z forward) for ego pose (x, y, yaw)."""
        x, y, yaw = pose
        c, s = math.cos(yaw), math.sin(yaw)
        camx, camy = x + c * self.cfg.mount_x, y + s * self.cfg.mount_x
        dx, dy = X - camx, Y - camy
        f = c * dx + s * dy
        left = c * dy - s * dx
        up = Z - self.cfg.mount_height
        return -left, -(f * self.sp + up * self.cp), f * self.cp - up * self.sp

    def pixels(self, xr, yd, zc):
        """Camera coordinates -> (u, v) pixels (zc must be positive)."""
        return self.cx + self.fx * xr / zc, self.cy + self.fy * yd / zc

    def ground_distance(self, v) -> np.ndarray:
        """Forward ground distance seen by image row ``v`` (inf at/above the horizon)."""
        yd = (np.asarray(v, dtype=np.float64) - self.cy) / self.fy
        fwd = self.cp - yd * self.sp
        up = -self.sp - yd * self.cp
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(up < -1e-9, self.cfg.mount_height / -up * fwd, np.inf)
        return d


def _fixed(u, v):
    """Pixels -> int32 fixed point (``SHIFT`` fractional bits); callers keep depth >= near,
    which bounds the coordinates far below int32 overflow."""
    out = np.empty(u.shape + (2,), np.int32)
    out[..., 0] = u * ONE
    out[..., 1] = v * ONE
    return out


# rear window and two tail lights as bilinear weights of a car's rear-face corners
# (bottom-left, bottom-right, top-left, top-right): rows = 12 points, 3 quads of 4
def _quad_weights(x0, x1, z0, z1):
    w = []
    for x, z in ((x0, z0), (x1, z0), (x1, z1), (x0, z1)):
        w.append([(1 - x) * (1 - z), x * (1 - z), (1 - x) * z, x * z])
    return w


CAR_DETAIL_W = np.array(_quad_weights(0.12, 0.88, 0.68, 0.93) + _quad_weights(0.04, 0.2, 0.42, 0.55)
                        + _quad_weights(0.8, 0.96, 0.42, 0.55))


class Renderer:
    def __init__(self, camera: Camera, road: Road, scenery: Scenery, look: Look, road_cfg):
        self.cam, self.road, self.scenery, self.look = camera, road, scenery, look
        H, W = camera.height, camera.width
        c = camera.cfg
        # cross-section sample distances (m ahead of the camera): dense near, sparse far
        d, ds = [-4.0], []
        while d[-1] < c.far:
            d.append(d[-1] + max(1.0, 0.07 * abs(d[-1])))
        self.ahead = np.array(d)
        R, S, lw = road.half_width, road_cfg.shoulder, road_cfg.line_width
        self.lat = np.array([-(R + S), -R, -R + lw, R - lw, R, R + S])
        self.bounds = -R + road.lane_width * np.arange(1, road.n_lanes)  # dashed lane lines
        self.lw, self.dash, self.period = lw, road_cfg.dash_length, road_cfg.dash_period
        # background: sky gradient to the fog color at the horizon, grass below
        self.hz = int(np.clip(math.ceil(camera.horizon_v), 0, H))
        bg = np.empty((H, W, 3), np.float64)
        t = (np.arange(H) / max(camera.horizon_v, 1.0)).clip(0, 1)[:, None, None]
        bg[:] = look.sky_top * (1 - t**0.6) + look.fog_rgb * t**0.6
        bg[self.hz:] = look.grass
        self.background = bg.round().astype(np.uint8)
        # ground fog by row: img = img * (1 - a) + fog * a
        dist = camera.ground_distance(np.arange(self.hz, H) + 0.5)
        a = 1.0 - np.exp(-dist / look.fog_distance)
        self.fog_keep = np.repeat(np.round(255 * (1 - a))[:, None, None], W, 1).repeat(3, 2).astype(np.uint8)
        self.fog_add = np.round(a[:, None, None] * look.fog_rgb[None, None]).repeat(W, 1).astype(np.uint8)
        self.hill_rgb = tuple(float(x) for x in 0.45 * look.hills + 0.55 * look.fog_rgb)
        cols = np.arange(W + 1, dtype=np.float64)
        self.col_az = np.arctan((camera.cx - cols) / camera.fx)  # left-positive azimuth
        # hill silhouette row per azimuth (0.25 deg grid), polygon closed below the horizon
        self.hill_v = (camera.cy - camera.fy * np.tan(look.hill_elev - camera.pitch)) * ONE
        self.hill_pts = np.zeros((W + 3, 2), np.int32)
        self.hill_pts[:-2, 0] = cols * ONE
        self.hill_pts[-2:] = [[W * ONE, int((camera.horizon_v + 1) * ONE)], [0, int((camera.horizon_v + 1) * ONE)]]
        self.scen_rgb = np.stack([look.color(scenery.rgb)], 0)[0]
        col = lambda a: tuple(float(x) for x in a)  # noqa: E731
        self.c_asphalt, self.c_shoulder = col(look.asphalt), col(look.shoulder)
        self.c_white = col(look.white)
        self.c_left = col(look.yellow if road.left_yellow else look.white)
        self.car_palette = [look.color(np.array(p)) for p in
                            ([200, 30, 30], [30, 60, 160], [220, 220, 220], [40, 40, 45],
                             [150, 150, 155], [20, 110, 60], [230, 170, 20], [110, 30, 90])]
        self.tail = col(look.color(np.array([255, 40, 30])))

    # ------------------------------------------------------------------ frame
    def render(self, pose, s_ego: float, vehicles: np.ndarray | None = None, mask: bool = False):
        """Frame uint8 [H, W, 3] (and lane-marking mask bool [H, W] when ``mask``) for ego
        pose (x, y, yaw) at arc length ``s_ego``; ``vehicles`` [n, 4] = (s, lateral, speed,
        length) rows, rows with length <= 0 are absent."""
        cam = self.cam
        img = self.background.copy()
        m = np.zeros((cam.height, cam.width), np.uint8) if mask else None
        self._hills(img, pose[2])
        s0 = s_ego + cam.cfg.mount_x
        self._road(img, m, pose, s0)
        if self.hz < cam.height:
            g = img[self.hz:]
            cv2.multiply(g, self.fog_keep, dst=g, scale=1 / 255)
            cv2.add(g, self.fog_add, dst=g)
        self._boxes(img, m, pose, s0, vehicles)
        return (img, m.view(bool)) if mask else img

    def _hills(self, img, yaw):
        n = len(self.hill_v)
        idx = np.round(np.mod(yaw + self.col_az, 2 * np.pi) * (n - 1) / (2 * np.pi)).astype(np.int64)
        self.hill_pts[:-2, 1] = self.hill_v[idx]
        cv2.fillPoly(img, [self.hill_pts], self.hill_rgb, cv2.LINE_8, SHIFT)

    def _road(self, img, m, pose, s0):
        cam, road = self.cam, self.road
        s = s0 + self.ahead
        s = s[(s >= 0) & (s <= road.length - 1)]
        if len(s) < 2:
            return
        x, y, sn, cs = road.at_sc(s)
        X = x[:, None] - sn[:, None] * self.lat[None]
        Y = y[:, None] + cs[:, None] * self.lat[None]
        xr, yd, zc = cam.to_cam(pose, X, Y, 0.0)
        # near-plane clipping along each longitudinal line: move a point behind the plane
        # onto it, towards the next point when that one is in front
        near = cam.cfg.near
        behind = zc < near
        if behind.any():
            t = np.clip((near - zc[:-1]) / np.where(np.abs(zc[1:] - zc[:-1]) > 1e-9, zc[1:] - zc[:-1], 1e-9), 0, 1)
            fix = behind[:-1] & ~behind[1:]
            for arr in (xr, yd, zc):
                arr[:-1][fix] += t[fix] * (arr[1:][fix] - arr[:-1][fix])
            behind = zc < near - 1e-6
            # keep the rows after the last one with a point still behind the plane
            rows = np.flatnonzero(behind.any(1))
            if len(rows):
                first = rows[-1] + 1
                if len(s) - first < 2:
                    return
                xr, yd, zc = xr[first:], yd[first:], zc[first:]
        P = _fixed(*cam.pixels(xr, yd, zc))  # [n_s, n_lat, 2]
        # each band is one polygon: up one lateral line, back down the other
        band = lambda ja, jb: np.concatenate([P[:, ja], P[::-1, jb]])  # noqa: E731
        fill = lambda pl, c, dst=img: cv2.fillPoly(dst, pl, c, cv2.LINE_8, SHIFT)  # noqa: E731
        fill([band(0, 1), band(4, 5)], self.c_shoulder)
        fill([band(1, 4)], self.c_asphalt)
        right, left = band(1, 2), band(3, 4)
        fill([right], self.c_white)
        fill([left], self.c_left)
        dashes = self._dashes(pose, s0) if len(self.bounds) else None
        if dashes is not None and len(dashes):
            fill(dashes, self.c_white)
        if m is not None:
            fill([right, left], 1, m)
            if dashes is not None and len(dashes):
                fill(dashes, 1, m)

    def _dashes(self, pose, s0):
        cam = self.cam
        lo, hi = max(s0 - 2.0, 0.0), min(s0 + cam.cfg.far * 0.75, self.road.length - self.dash - 1)
        k = np.arange(math.ceil((lo - self.dash) / self.period), math.floor(hi / self.period) + 1)
        if len(k) == 0:
            return None
        start = np.maximum(k * self.period, 0.0)
        S = np.stack([start, start, start + self.dash, start + self.dash], -1)  # [nd, 4]
        x, y, sn, cs = self.road.at_sc(S)
        half = self.lw / 2
        lat = self.bounds[:, None, None] + np.array([-half, half, half, -half])[None, None]  # [nl, 1, 4]
        X = x[None] - sn[None] * lat
        Y = y[None] + cs[None] * lat
        xr, yd, zc = cam.to_cam(pose, X, Y, 0.0)
        ok = (zc > cam.cfg.near).all(-1)
        P = _fixed(*cam.pixels(xr, yd, np.where(zc > cam.cfg.near, zc, 1.0)))
        return P[ok]

    def _boxes(self, img, m, pose, s0, vehicles):
        cam, sc = self.cam, self.scenery
        i0, i1 = np.searchsorted(sc.s, [s0 - 30.0, s0 + cam.cfg.scenery_far])
        corners = [sc.corners[i0:i1]]
        rgb = [self.scen_rgb[i0:i1]]
        kind = [np.zeros(i1 - i0, np.int8)]
        if vehicles is not None and len(vehicles):
            v = vehicles[(vehicles[:, 3] > 0) & (np.abs(vehicles[:, 0] - s0) < cam.cfg.far)]
            if len(v):
                n = len(v)
                corners.append(box_corners(self.road, v[:, 0], v[:, 1], v[:, 3] / 2, np.full(n, 0.92),
                                           np.zeros(n), np.full(n, 1.5)))
                idx = np.round(np.abs(v[:, 0] * 7.31 + v[:, 3] * 13.7)).astype(int) % len(self.car_palette)
                rgb.append(np.stack([self.car_palette[i] for i in idx]))
                kind.append(np.ones(n, np.int8))
        corners, rgb, kind = np.concatenate(corners), np.concatenate(rgb), np.concatenate(kind)
        if not len(corners):
            return
        xr, yd, zc = cam.to_cam(pose, corners[..., 0], corners[..., 1], corners[..., 2])
        ok = (zc > cam.cfg.near).all(-1)
        u, v = cam.pixels(xr, yd, np.where(zc > cam.cfg.near, zc, 1.0))
        ok &= (u.max(-1) >= 0) & (u.min(-1) < cam.width) & (v.min(-1) < cam.height)
        if not ok.any():
            return
        depth = zc.min(-1)
        # skip boxes smaller than a pixel in both directions
        ok &= ((u.max(-1) - u.min(-1)) > 0.6) | ((v.max(-1) - v.min(-1)) > 0.6)
        order = np.flatnonzero(ok)[np.argsort(-depth[ok], kind="stable")]
        if not len(order):
            return
        P = _fixed(u[order], v[order])
        a = (1.0 - np.exp(-depth[order] / self.look.fog_distance))[:, None]
        fog = self.look.fog_rgb * a
        front = (rgb[order] * (1 - a) + fog).tolist()
        side = (0.72 * rgb[order] * (1 - a) + fog).tolist()
        faces = np.ascontiguousarray(P[:, [0, 1, 5, 4]])
        # the near face in its own shade only where it is visible (wide) and fog leaves contrast
        wide = (((u[order, 1] - u[order, 0]) > 1.5) & (a[:, 0] < 0.6)).tolist()
        car = ((kind[order] == 1) & (depth[order] < 60)).tolist()
        for i in range(len(order)):
            hull = cv2.convexHull(P[i])
            cv2.fillConvexPoly(img, hull, side[i], cv2.LINE_8, SHIFT)
            if m is not None:
                cv2.fillConvexPoly(m, hull, 0, cv2.LINE_8, SHIFT)
            if wide[i]:
                cv2.fillConvexPoly(img, faces[i], front[i], cv2.LINE_8, SHIFT)
            if car[i]:
                self._car_details(img, P[i])

    def _car_details(self, img, pts):
        """Rear window and tail lights on a car's rear face (corners 0,1 bottom, 4,5 top)."""
        q = (CAR_DETAIL_W @ pts[[0, 1, 4, 5]]).astype(np.int32).reshape(3, 4, 2)
        cv2.fillConvexPoly(img, q[0], (25.0, 28.0, 35.0), cv2.LINE_8, SHIFT)
        cv2.fillPoly(img, q[1:], self.tail, cv2.LINE_8, SHIFT)
