"""The road-facing camera of a fleet log (the schema's ``meta.camera``) and its ground-plane
re-projection: where a pixel of a camera on a moved car looks in the reference car's camera.

Used by behaviour cloning's recovery views (``drivegpt.rl.viewpoint``: a frame re-rendered as
if the car stood off the logged line). With a forward move too, it says where each pixel of the
next frame was in the previous one (tested against the road world's render from the moved car;
a world-model warp built on it was measured and left on the branch ``exp/prev-geometry``, README
"World model").

Model: every pixel casts a ray. Rays that hit the flat ground within ``far`` metres take the
ground point; the rest (sky, the far road) are treated as at infinity and only rotate. Things
above the road are moved as if painted on it. Frames: the schema's ego frame (x forward, y left,
z up, from the rear axle at ground level); camera x right, y down, z forward.

``fx fy cx cy`` and the frame size (``width height``) are required; ``mount_height`` (default
1.22 m), ``mount_x`` (1.2 m forward of the pose reference) and ``pitch_down_deg`` (0) are read
when the log has them. ``scaled`` gives the same camera for resized frames.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

REQUIRED = ("fx", "fy", "cx", "cy", "width", "height")


@dataclass(frozen=True)
class Camera:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    mount_height: float = 1.22
    mount_x: float = 1.2
    pitch_down_deg: float = 0.0

    @classmethod
    def from_meta(cls, cam: dict[str, Any], where: str = "meta.camera") -> "Camera":
        """From a ``meta.camera`` dict (extra keys such as ``hfov_deg`` are ignored); a missing
        intrinsic or a non-positive focal length / mount height raises naming ``where``."""
        if not isinstance(cam, dict):
            raise ValueError(f"{where}: expected a dict of intrinsics, got {type(cam).__name__}")
        missing = [k for k in REQUIRED if cam.get(k) is None]
        if missing:
            raise ValueError(f"{where}: missing {missing} (the camera model needs the intrinsics {list(REQUIRED)})")
        kw = {k: float(cam[k]) for k in ("fx", "fy", "cx", "cy")}
        kw.update(width=int(cam["width"]), height=int(cam["height"]))
        for k in ("mount_height", "mount_x", "pitch_down_deg"):
            if cam.get(k) is not None:
                kw[k] = float(cam[k])
        c = cls(**kw)
        if c.fx <= 0 or c.fy <= 0 or c.mount_height <= 0 or c.width <= 0 or c.height <= 0:
            raise ValueError(f"{where}: fx, fy, mount_height, width and height must be > 0, got {cam}")
        return c

    def to_dict(self) -> dict:
        return asdict(self)

    def scaled(self, height: int, width: int) -> "Camera":
        """The same camera for frames resized to ``height x width``."""
        if (height, width) == (self.height, self.width):
            return self
        sx, sy = width / self.width, height / self.height
        return Camera(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                      int(width), int(height), self.mount_height, self.mount_x, self.pitch_down_deg)


def reproject(cam: Camera, u: torch.Tensor, v: torch.Tensor, dx, dy, dyaw,
              far: float = 150.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(u, v)`` of the camera of a car at ``(dx, dy)`` metres (forward, left) turned
    ``dyaw`` radians (left) in the reference car's frame -> the reference camera's pixels
    ``(mx, my)`` that see the same ground point (or, off the ground, the same direction).

    Every argument is a tensor or a number and they broadcast (e.g. ``u, v`` [h, w] against a
    batch of moves [b, 1, 1]); the result has the broadcast shape and ``u``'s dtype."""
    dt = u.dtype if torch.is_floating_point(u) else torch.float32
    u, v = u.to(dt), v.to(dt)
    dx, dy, dyaw = (torch.as_tensor(a, dtype=dt, device=u.device) for a in (dx, dy, dyaw))
    X, Y = (u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy  # camera ray: x right, y down, z = 1 forward
    th = math.radians(cam.pitch_down_deg)
    sp, cp = math.sin(th), math.cos(th)
    fwd, left, up = cp - Y * sp, -X, -(sp + Y * cp)  # the ray in the car's frame (forward, left, up)
    c, s = torch.cos(dyaw), torch.sin(dyaw)
    # where the ray meets the ground, in the moved car's frame (from its rear axle)
    hits = up < -1e-6
    t = torch.where(hits, cam.mount_height / torch.where(hits, -up, torch.ones_like(up)), torch.zeros_like(up))
    gx, gy = cam.mount_x + t * fwd, t * left
    ground = hits & (torch.hypot(t * fwd, t * left) < far)
    # ground points -> the reference car's frame -> seen from the reference camera
    rx = c * gx - s * gy + dx
    ry = s * gx + c * gy + dy
    pf, pl = rx - cam.mount_x, ry
    pu = torch.full_like(pf, -cam.mount_height)
    # rays at infinity only turn
    inf_f, inf_l = c * fwd - s * left, s * fwd + c * left
    pf, pl, pu = torch.where(ground, pf, inf_f), torch.where(ground, pl, inf_l), torch.where(ground, pu, up)
    cz = pf * cp - pu * sp
    cx_, cy_ = -pl, -(pf * sp + pu * cp)
    cz = cz.clamp_min(1e-6)
    return cam.fx * cx_ / cz + cam.cx, cam.fy * cy_ / cz + cam.cy


__all__ = ["Camera", "REQUIRED", "reproject"]
