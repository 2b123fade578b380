"""Viewpoint augmentation for behaviour cloning: what the camera would have seen from a car
shifted sideways and turned, and the action that steers back to the logged path.

A cloned policy only sees the states the fleet drove through. Once it drifts off the line it
meets frames it was never taught on, and it does not know how to come back (compounding
error). NVIDIA's PilotNet (Bojarski et al. 2016) trained recovery from the same log by
re-rendering each frame as if the car stood off the line and correcting the label. This module
does that with the camera's intrinsics from the log (``meta.camera``), no simulator:

- **Frames.** A virtual car at ``(0, dy)`` with heading ``dyaw`` relative to the logged car
  (metres and radians, left-positive, rear-axle frame). Every pixel of the virtual camera casts
  a ray. Rays that hit the ground within ``far`` metres take the ground point's pixel in the
  real camera; the rest (sky, the far road) are treated as at infinity and only rotate. Things
  above the road are distorted as if painted on it, the price PilotNet paid too. One remap
  (``cv2.remap``) per window serves all K frames of its history: the car is shown offset by the
  same amount over the window, driving parallel to the logged line. With ``drift`` (and the
  seconds between frames) each earlier frame is shown where the heading error had the car drive
  from instead, ``dy - v t sin(dyaw)``, so the history moves sideways as a turned car's does.
- **Label.** The logged path is continued as the arc of the logged curvature. The target is
  the point ``preview_s`` seconds ahead on that arc (at least ``min_preview_m``). The label's
  curvature is the pure-pursuit arc from the virtual car to that point, ``2 y / (x^2 + y^2)``
  in the virtual car's frame. From the logged car it is exactly the logged curvature, so with
  ``dy = dyaw = 0`` the label is BC's own. The accel is unchanged.

Camera geometry (``meta.camera`` and the ground-plane re-projection) lives in
``drivegpt.data.camera``. Intrinsics are scaled when the frames are a different size than the
camera record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from drivegpt.data.camera import Camera, reproject
from drivegpt.sim.vehicle import ACTION_SCALE

def shift_maps(cam: Camera, dy: float, dyaw: float, far: float = 150.0) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (float32 [H, W] each): for every pixel of the camera of a car displaced by
    ``dy`` metres (left) and turned ``dyaw`` radians (left), where to read the real frame."""
    v, u = torch.meshgrid(torch.arange(cam.height, dtype=torch.float64), torch.arange(cam.width, dtype=torch.float64),
                          indexing="ij")
    mx, my = reproject(cam, u, v, 0.0, dy, dyaw, far)
    return mx.numpy().astype(np.float32), my.numpy().astype(np.float32)


def shift_frames(frames: np.ndarray, cam: Camera, dy: float, dyaw: float) -> np.ndarray:
    """uint8 frames [..., H, W, 3] re-rendered from the displaced car (edges replicated)."""
    mx, my = shift_maps(cam.scaled(frames.shape[-3], frames.shape[-2]), dy, dyaw)
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = np.stack([cv2.remap(np.ascontiguousarray(f), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                    for f in flat])
    return out.reshape(frames.shape)


def recovery_curvature(curvature: torch.Tensor, speed: torch.Tensor, dy: torch.Tensor, dyaw: torch.Tensor,
                       preview_s: float = 1.0, min_preview_m: float = 5.0,
                       max_lat_accel: float | None = None) -> torch.Tensor:
    """Curvature [b] (1/m) of the pure-pursuit arc from the displaced car to the logged path's
    point ``preview_s`` ahead; the path continues as the arc of ``curvature`` [b] at ``speed`` [b].
    ``max_lat_accel`` (m/s^2): the correction never asks for more lateral acceleration than this
    (or than the logged curvature did, if more): a comfortable recovery, not a swerve."""
    L = (speed * preview_s).clamp_min(min_preview_m)
    k = curvature
    kl = k * L
    small = kl.abs() < 1e-4
    ks = torch.where(small, torch.ones_like(k), k)
    tx = torch.where(small, L, torch.sin(kl) / ks)
    ty = torch.where(small, 0.5 * k * L * L, (1 - torch.cos(kl)) / ks)
    # the target in the displaced car's frame
    c, s = torch.cos(dyaw), torch.sin(dyaw)
    px, py = tx, ty - dy
    x, y = c * px + s * py, -s * px + c * py
    out = 2.0 * y / (x * x + y * y).clamp_min(1.0)
    if max_lat_accel is not None:
        bound = torch.maximum(k.abs(), max_lat_accel / (speed * speed).clamp_min(1.0))
        out = torch.maximum(torch.minimum(out, bound), -bound)
    return out


@dataclass
class ViewpointAugment:
    """Per window, with probability ``prob``: a lateral offset ~ U(-max_offset_m, max_offset_m) and
    a yaw ~ U(-max_yaw, max_yaw); frames re-rendered, curvature label corrected (its lateral
    acceleration capped at ``max_lat_accel`` when set)."""

    camera: Camera
    prob: float = 0.5
    max_offset_m: float = 0.6
    max_yaw: float = 0.03
    preview_s: float = 1.0
    max_lat_accel: float | None = None
    frame_dt: float | None = None  # s between the window's frames: the history drifts as the heading implies

    @classmethod
    def from_settings(cls, camera: Camera, settings: dict[str, Any], where: str = "rl.bc.viewpoint",
                      frame_dt: float | None = None) -> "ViewpointAugment":
        """From the config group (``prob``, ``max_offset_m``, ``max_yaw``, ``preview_s``, ``max_lat_accel``,
        ``drift``: with ``frame_dt``, the seconds between the window's frames, the earlier frames show
        the car where its heading error had it drive from); an unknown key or an out-of-range value
        raises naming it."""
        known = {"prob", "max_offset_m", "max_yaw", "preview_s", "max_lat_accel", "drift"}
        settings = dict(settings)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        drift = bool(settings.pop("drift", False))
        if drift and not frame_dt:
            raise ValueError(f"{where}.drift: needs the seconds between the window's frames")
        kw = {k: (None if v is None else float(v)) for k, v in settings.items()}
        aug = cls(camera, **kw, frame_dt=float(frame_dt) if drift else None)
        if not 0.0 <= aug.prob <= 1.0:
            raise ValueError(f"{where}.prob: must be in [0, 1], got {aug.prob}")
        for k in ("max_offset_m", "max_yaw"):
            if getattr(aug, k) < 0:
                raise ValueError(f"{where}.{k}: must be >= 0, got {getattr(aug, k)}")
        if aug.preview_s <= 0 or (aug.max_lat_accel is not None and aug.max_lat_accel <= 0):
            raise ValueError(f"{where}: preview_s and max_lat_accel must be > 0, got {aug.preview_s}, "
                             f"{aug.max_lat_accel}")
        return aug

    def __call__(self, frames: torch.Tensor, speed: torch.Tensor, target: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """frames uint8 [b K H W 3], speed [b], normalized target actions [b 2] -> both augmented."""
        b = frames.shape[0]
        do = torch.rand(b, generator=generator) < self.prob
        if not bool(do.any()):
            return frames, target
        dy = (torch.rand(b, generator=generator) * 2 - 1) * self.max_offset_m * do
        dyaw = (torch.rand(b, generator=generator) * 2 - 1) * self.max_yaw * do
        out = frames.clone()
        arr = frames.cpu().numpy()
        kk = frames.shape[1]
        for i in torch.nonzero(do).flatten().tolist():
            if self.frame_dt:  # frame j was (K-1-j) frames earlier: the car was v t sin(dyaw) less far off
                back = (kk - 1 - torch.arange(kk)).float() * self.frame_dt * float(speed[i])
                offs = float(dy[i]) - back * math.sin(float(dyaw[i]))
                out[i] = torch.from_numpy(np.stack([shift_frames(arr[i, j], self.camera, float(offs[j]), float(dyaw[i]))
                                                    for j in range(kk)]))
            else:
                out[i] = torch.from_numpy(shift_frames(arr[i], self.camera, float(dy[i]), float(dyaw[i])))
        k = target[:, 0].float().cpu() * ACTION_SCALE[0]
        k_new = recovery_curvature(k, speed.float().cpu(), dy, dyaw, self.preview_s, max_lat_accel=self.max_lat_accel)
        new = target.clone()
        new[:, 0] = torch.where(do, (k_new / ACTION_SCALE[0]).clamp(-1.0, 1.0), target[:, 0].float().cpu()).to(target)
        return out.to(frames.device), new


__all__ = ["ViewpointAugment", "recovery_curvature", "shift_frames", "shift_maps"]
