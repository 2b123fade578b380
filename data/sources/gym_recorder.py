"""Record fleet logs from any gymnasium env that renders RGB frames.

Plugging an env in takes four import paths (``module:attr``) in the ``gym`` config block
(configs/data_ingest.yaml shows the CarRacing-v3 worked example):

- ``policy``: a factory ``f(seed: int, **policy_kwargs)`` returning an object with
  ``act(env, obs) -> action`` (the "autopilot" being logged; ``env`` is the wrapped env, use
  ``env.unwrapped`` for privileged state);
- ``takeover``: the same kind of factory for the "human" who drives after a disengagement
  (``takeover_kwargs``); it drives for ``takeover_seconds`` and hands back once the
  disengagement predicate is clear again;
- ``pose``: ``f(env) -> (x, y, z, roll, pitch, yaw)`` world pose of the ego in the schema
  convention (x forward, y left, z up; yaw counter-clockwise from the world x axis);
- ``disengage``: ``f(env, obs, info) -> int`` cause code (data.schema.Cause; 0 = fine),
  evaluated after every step while the autopilot is engaged;
- optional ``speed``: ``f(env) -> float`` forward speed (default: from consecutive poses).

Frames come from the observation (``frame: obs``, for envs whose obs is an RGB image) or from
``env.render()`` (``frame: render``, env made with render_mode="rgb_array"); they are cropped
to the output aspect ratio around ``center_row`` (fraction of the height) and area-resized.
One recorded frame per env step (``fps`` = the env's ``metadata["render_fps"]``); an episode
of ``seconds`` (or until it terminates) is one Segment, episode i uses seed ``first_seed + i``.

CarRacing-v3 example: pose from ``car.hull`` (Box2D world units, ~metres; the hull's forward
axis is its local +y, so yaw = hull.angle + pi/2), disengagement STEER when no wheel touches a
road tile (the car left the track), ``CarRacingPilot`` a pure-pursuit driver along the track
centreline with per-episode steering noise/bias (the autopilot of randomized quality) and the
same pilot without noise as the takeover driver.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from drivegpt.data.schema import Cause, Segment, validate
from drivegpt.data.sources.common import (SourceError, camera_after_crop, crop_box, crop_resize, euler_to_matrix,
                                 import_path, rel_from_world)


# ------------------------------------------------------------------------------------------
# CarRacing-v3 worked example


def car_racing_pose(env) -> tuple[float, float, float, float, float, float]:
    """World pose of CarRacing's car hull (forward = the body's local +y axis)."""
    hull = env.unwrapped.car.hull
    x, y = hull.position
    return float(x), float(y), 0.0, 0.0, 0.0, float(hull.angle) + math.pi / 2


def car_racing_speed(env) -> float:
    """Forward speed of the hull (velocity projected on its forward axis)."""
    hull = env.unwrapped.car.hull
    fwd = hull.GetWorldVector((0, 1))
    v = hull.linearVelocity
    return float(fwd[0] * v[0] + fwd[1] * v[1])


def car_racing_off_track(env, obs=None, info=None) -> int:
    """STEER when no wheel touches a road tile (the car has left the track), else 0."""
    wheels = env.unwrapped.car.wheels
    return int(Cause.STEER) if all(len(w.tiles) == 0 for w in wheels) else 0


class CarRacingPilot:
    """Pure pursuit towards the track centreline ``lookahead`` points ahead, holding
    ``target_speed``; ``noise``/``bias`` (drawn per episode from the seed) degrade it."""

    def __init__(self, seed: int = 0, lookahead: int = 6, gain: float = 1.5, target_speed: float = 25.0,
                 noise: float = 0.0, bias: float = 0.0):
        rng = np.random.default_rng(seed)
        self.lookahead, self.gain, self.target_speed = lookahead, gain, target_speed
        self.noise = noise * rng.uniform(0.5, 1.5)
        self.bias = bias * rng.uniform(-1.0, 1.0) if bias else 0.0
        self.rng = rng

    def act(self, env, obs=None) -> np.ndarray:
        u = env.unwrapped
        track = np.asarray([t[2:4] for t in u.track])
        x, y, _, _, _, yaw = car_racing_pose(env)
        i = int(np.argmin(((track - (x, y)) ** 2).sum(1)))
        tx, ty = track[(i + self.lookahead) % len(track)]
        err = math.atan2(ty - y, tx - x) - yaw
        err = (err + math.pi) % (2 * math.pi) - math.pi  # left positive
        steer = -self.gain * err + self.bias + self.noise * self.rng.standard_normal()
        speed = car_racing_speed(env)
        gas = 0.3 if speed < self.target_speed else 0.0
        brake = 0.2 if speed > 1.3 * self.target_speed else 0.0
        return np.array([np.clip(steer, -1, 1), gas, brake], dtype=np.float32)


# ------------------------------------------------------------------------------------------
# generic recorder


def record_episode(env_id: str, seed: int, seconds: float, policy: Callable, pose: Callable,
                   disengage: Callable, takeover: Callable | None = None, speed: Callable | None = None,
                   env_kwargs: dict | None = None, policy_kwargs: dict | None = None,
                   takeover_kwargs: dict | None = None, takeover_seconds: float = 2.0,
                   frame: str = "obs", height: int = 128, width: int = 256, center_row: float = 0.5,
                   hfov_deg: float = 60.0, segment_prefix: str | None = None) -> Segment:
    """Run one episode of ``env_id`` and return it as a validated Segment."""
    kw = dict(env_kwargs or {})
    if frame == "render":
        kw.setdefault("render_mode", "rgb_array")
    elif frame != "obs":
        raise SourceError(f"gym recorder: frame must be 'obs' or 'render', got {frame!r}")
    env = gym.make(env_id, **kw)
    try:
        fps = float(env.metadata.get("render_fps") or 0)
        if fps <= 0:
            raise SourceError(f"gym env {env_id}: metadata['render_fps'] missing; cannot time frames")
        autopilot = policy(seed=seed, **(policy_kwargs or {}))
        human = takeover(seed=seed + 1_000_003, **(takeover_kwargs or {})) if takeover else autopilot
        obs, info = env.reset(seed=int(seed))
        n_max = max(1, int(round(seconds * fps)))
        out_hw = (int(height), int(width))
        frames, poses, speeds, engaged, causes = [], [], [], [], []
        box = None
        is_engaged, takeover_left = True, 0
        for t in range(n_max):
            img = obs if frame == "obs" else env.render()
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
                raise SourceError(f"gym env {env_id}: frame ({frame}) at step {t} has shape {img.shape} "
                                  f"dtype {img.dtype}, expected uint8 [H, W, 3]")
            if box is None:
                box = crop_box(img.shape[:2], out_hw, center_row * img.shape[0])
                src_hw = img.shape[:2]
            frames.append(crop_resize(img, box, out_hw))
            poses.append(np.asarray(pose(env), dtype=np.float64))
            speeds.append(float(speed(env)) if speed else np.nan)
            engaged.append(is_engaged)
            driver = autopilot if is_engaged else human
            obs, _, terminated, truncated, info = env.step(driver.act(env, obs))
            cause = int(disengage(env, obs, info))
            if is_engaged and cause:
                causes.append(cause)  # the disengagement belongs to the frame whose action led to it
                is_engaged, takeover_left = False, int(round(takeover_seconds * fps))
            else:
                causes.append(0)
                if not is_engaged:
                    takeover_left -= 1
                    if takeover_left <= 0 and not cause:
                        is_engaged = True
            if terminated or truncated:
                break
    finally:
        env.close()
    world = np.stack(poses)
    if not np.isfinite(world).all():
        raise SourceError(f"gym env {env_id}: pose extractor returned NaN/inf")
    rel = rel_from_world(world[:, :3], euler_to_matrix(world[:, 3:]))
    sp = np.asarray(speeds)
    if not speed:
        sp = np.append(rel[:-1, 0] * fps, rel[-2, 0] * fps if len(rel) > 1 else 0.0)
    T = len(frames)
    fx = 0.5 * src_hw[1] / math.tan(math.radians(hfov_deg) / 2)
    sid = f"{segment_prefix or env_id}-seed{seed}"
    seg = Segment(
        frames=np.stack(frames), rel_pose=rel.astype(np.float32), world_pose=world.astype(np.float32),
        speed=sp.astype(np.float32), engaged=np.asarray(engaged, dtype=bool),
        disengage=np.asarray(causes, dtype=np.int8), times=np.arange(T, dtype=np.float64) / fps,
        meta=dict(source="gym", segment_id="".join(c if c.isalnum() or c in "_-" else "_" for c in sid),
                  fps=fps, env_id=env_id, seed=int(seed), camera=camera_after_crop(fx, fx, src_hw[1] / 2, src_hw[0] / 2, box, out_hw),
                  vehicle={"model": env_id}),
    )
    return validate(seg, where=f"gym env {env_id} seed {seed}")


class GymSource:
    """Indexed source: episode i of ``env_id`` with seed ``first_seed + i``."""

    def __init__(self, env_id: str, policy: str, pose: str, disengage: str, episodes: int = 1,
                 seconds: float = 60.0, first_seed: int = 0, takeover: str | None = None,
                 speed: str | None = None, **kwargs):
        for name, spec in dict(policy=policy, pose=pose, disengage=disengage, takeover=takeover,
                               speed=speed).items():
            if spec is not None:
                import_path(spec)  # fail early, in the parent process, with a clear message
        self.env_id, self.first_seed, self.seconds = env_id, int(first_seed), float(seconds)
        self.specs = dict(policy=policy, pose=pose, disengage=disengage, takeover=takeover, speed=speed)
        self.kwargs = {k: (dict(v) if isinstance(v, dict) or hasattr(v, "items") else v) for k, v in kwargs.items()}
        self.n_items = int(episodes)

    def make_item(self, i: int) -> Segment:
        fns = {k: import_path(v) if v else None for k, v in self.specs.items()}
        return record_episode(self.env_id, self.first_seed + i, self.seconds, **fns, **self.kwargs)
