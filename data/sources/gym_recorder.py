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
One recorded frame per env step. The log rate is the env's *step* rate (``step_rate``):
``fps`` when given (``gym.fps``), else ``1 / env.unwrapped.dt`` when the env defines ``dt``
(MuJoCo, many driving envs), else ``metadata["render_fps"]`` (logged as such: some envs render
at another rate than they step). When a ``speed`` adapter is given, the logged speed is
cross-checked against the speed the poses imply at that rate, and the recording fails naming
both (and the rate they imply) when their median ratio is off by more than ``speed_tolerance``.
An episode of ``seconds`` (or until it terminates) is one Segment, episode i uses seed
``first_seed + i``.

Adapters are checked as they run: a pose that is not 6 finite numbers, a cause code that is
not an int 0-3, a speed that is not a finite number, or an adapter that raises, is a
SourceError naming the adapter's import path, the step and what was expected.

CarRacing-v3 example: pose from ``car.hull`` (Box2D world units, ~metres; the hull's forward
axis is its local +y, so yaw = hull.angle + pi/2), disengagement STEER when no wheel touches a
road tile (the car left the track), ``CarRacingPilot`` a pure-pursuit driver along the track
centreline with per-episode steering noise/bias (the autopilot of randomized quality) and the
same pilot without noise as the takeover driver.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


def adapter_name(fn) -> str:
    """``module:qualname`` of an adapter (its import path when it is a module-level object)."""
    mod = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{mod}:{name}"


def step_rate(env, fps: float | None = None) -> tuple[float, str]:
    """(frames per second of one env step, where it came from)."""
    if fps is not None:
        if not float(fps) > 0:
            raise SourceError(f"gym.fps must be > 0, got {fps!r}")
        return float(fps), "gym.fps"
    dt = getattr(env.unwrapped, "dt", None)
    if isinstance(dt, (int, float, np.floating)) and float(dt) > 0:
        return 1.0 / float(dt), "1 / env.unwrapped.dt"
    r = env.metadata.get("render_fps")
    if r and float(r) > 0:
        return float(r), "metadata['render_fps']"
    return 0.0, ""


class _Adapters:
    """Calls the adapters and checks what they return, naming the import path and step."""

    def __init__(self, where: str, pose, disengage, speed=None):
        self.where, self.pose_fn, self.dis_fn, self.speed_fn = where, pose, disengage, speed

    def _call(self, role: str, fn, t: int, *args, name: str | None = None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SourceError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised naming the adapter
            raise SourceError(f"{self.where}: gym.{role} {name or adapter_name(fn)!r} raised {type(e).__name__}: {e} "
                              f"at step {t}{self._hint(role)}") from e

    @staticmethod
    def _hint(role: str) -> str:
        if role in ("takeover", "policy"):
            return (f" (gym.{role} must drive this env; the CarRacing pilot only drives CarRacing-v3, "
                    "see gym=car_racing)")
        return ""

    def pose(self, env, t: int) -> np.ndarray:
        out = self._call("pose", self.pose_fn, t, env)
        try:
            arr = np.asarray(out, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (6,) or np.ndim(out) != 1:
            n = f"{len(out)} values" if hasattr(out, "__len__") else repr(out)
            raise SourceError(f"{self.where}: gym.pose {adapter_name(self.pose_fn)!r} returned {n} "
                              f"({type(out).__name__}) at step {t}; expected 6 numbers "
                              "(x, y, z, roll, pitch, yaw: metres and radians, x forward, y left, z up)")
        if not np.isfinite(arr).all():
            raise SourceError(f"{self.where}: gym.pose {adapter_name(self.pose_fn)!r} returned {arr.tolist()} "
                              f"at step {t}: NaN or inf")
        return arr

    def cause(self, env, obs, info, t: int) -> int:
        out = self._call("disengage", self.dis_fn, t, env, obs, info)
        ok = isinstance(out, (int, np.integer)) and not isinstance(out, bool) or isinstance(out, (bool, np.bool_))
        if not ok or not 0 <= int(out) <= 3:
            raise SourceError(f"{self.where}: gym.disengage {adapter_name(self.dis_fn)!r} returned {out!r} "
                              f"({type(out).__name__}) at step {t}; expected an int cause code 0-3 "
                              "(0 none, 1 STEER, 2 BRAKE, 3 GAS; data.schema.Cause)")
        return int(out)

    def speed(self, env, t: int) -> float:
        out = self._call("speed", self.speed_fn, t, env)
        try:
            v = float(out)
        except (TypeError, ValueError):
            v = None
        if v is None or np.ndim(out) != 0 or not math.isfinite(v):
            raise SourceError(f"{self.where}: gym.speed {adapter_name(self.speed_fn)!r} returned {out!r} "
                              f"({type(out).__name__}) at step {t}; expected one finite number "
                              "(forward speed, m/s)")
        return v


def check_speed(logged: np.ndarray, world: np.ndarray, fps: float, tolerance: float, where: str,
                source: str, speed_name: str) -> None:
    """Fail when the logged speed and the speed the poses imply at ``fps`` disagree by more than
    ``tolerance`` (relative, median over moving frames): the frame rate is wrong, or an adapter."""
    if tolerance is None or len(world) < 3:
        return
    dist = np.linalg.norm(np.diff(world[:, :3], axis=0), axis=1)
    v = np.abs(np.asarray(logged, np.float64))
    moving = (v[:-1] > 0.5) & (v[1:] > 0.5)
    if moving.sum() < 3:
        return
    pose_speed = float(np.median(dist[moving] * fps))
    log_speed = float(np.median(0.5 * (v[:-1] + v[1:])[moving]))
    ratio = pose_speed / log_speed
    if abs(ratio - 1.0) > float(tolerance):
        raise SourceError(
            f"{where}: the logged speed ({speed_name}) is {log_speed:.2f} m/s (median over moving frames) but "
            f"the poses move {pose_speed:.2f} m/s at {fps:g} Hz (from {source}); ratio {ratio:.2f} is beyond "
            f"gym.speed_tolerance={tolerance:g}. If the env steps at {fps / ratio:.3g} Hz, set gym.fps="
            f"{fps / ratio:.3g}; otherwise check the pose and speed adapters' units")


def record_episode(env_id: str, seed: int, seconds: float, policy: Callable, pose: Callable,
                   disengage: Callable, takeover: Callable | None = None, speed: Callable | None = None,
                   env_kwargs: dict | None = None, policy_kwargs: dict | None = None,
                   takeover_kwargs: dict | None = None, takeover_seconds: float = 2.0,
                   frame: str = "obs", height: int = 128, width: int = 256, center_row: float = 0.5,
                   hfov_deg: float = 60.0, segment_prefix: str | None = None, fps: float | None = None,
                   speed_tolerance: float | None = 0.25) -> Segment:
    """Run one episode of ``env_id`` and return it as a validated Segment."""
    kw = dict(env_kwargs or {})
    if frame == "render":
        kw.setdefault("render_mode", "rgb_array")
    elif frame != "obs":
        raise SourceError(f"gym recorder: frame must be 'obs' or 'render', got {frame!r}")
    where = f"gym env {env_id} seed {seed}"
    env = gym.make(env_id, **kw)
    try:
        fps, fps_from = step_rate(env, fps)
        if fps <= 0:
            raise SourceError(f"gym env {env_id}: no step rate: set gym.fps (the env has no unwrapped.dt and "
                              "no metadata['render_fps']); cannot time frames")
        if fps_from == "metadata['render_fps']":
            log.info("gym env %s: log rate %g Hz from metadata['render_fps'] (set gym.fps if the env steps "
                     "at another rate)", env_id, fps)
        ad = _Adapters(where, pose, disengage, speed)
        autopilot = _make(ad, "policy", policy, seed, policy_kwargs)
        human = _make(ad, "takeover", takeover, seed + 1_000_003, takeover_kwargs) if takeover else autopilot
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
            poses.append(ad.pose(env, t))
            speeds.append(ad.speed(env, t) if speed else np.nan)
            engaged.append(is_engaged)
            driver, role = (autopilot, "policy") if is_engaged else (human, "takeover" if takeover else "policy")
            action = ad._call(role, driver.act, t, env, obs, name=adapter_name(driver))
            try:
                obs, _, terminated, truncated, info = env.step(action)
            except Exception as e:  # noqa: BLE001 - name the adapter whose action it was
                raise SourceError(f"{where}: env.step rejected the action {action!r} of gym.{role} "
                                  f"{adapter_name(driver)!r} at step {t} ({type(e).__name__}: {e}); "
                                  f"the env's action space is {env.action_space}") from e
            cause = ad.cause(env, obs, info, t)
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
    if speed:
        check_speed(sp, world, fps, speed_tolerance, where, fps_from, f"gym.speed {adapter_name(speed)!r}")
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
                  fps=fps, fps_from=fps_from, env_id=env_id, seed=int(seed), camera=camera_after_crop(fx, fx, src_hw[1] / 2, src_hw[0] / 2, box, out_hw),
                  vehicle={"model": env_id}),
    )
    return validate(seg, where=f"gym env {env_id} seed {seed}")


def _make(ad: _Adapters, role: str, factory, seed: int, kwargs: dict | None):
    """``factory(seed=..., **kwargs)``, checked to give an object with ``act(env, obs)``."""
    obj = ad._call(role, factory, 0, seed=seed, **(kwargs or {}))
    if not callable(getattr(obj, "act", None)):
        raise SourceError(f"{ad.where}: gym.{role} {adapter_name(factory)!r} built a {type(obj).__name__} "
                          "without an act(env, obs) method; expected a factory f(seed, **kwargs) returning "
                          "an object with act(env, obs) -> action")
    return obj


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
        if self.kwargs.get("fps") is not None and not float(self.kwargs["fps"]) > 0:
            raise SourceError(f"gym.fps must be > 0 (or null: the env's step rate), got {self.kwargs['fps']!r}")
        self.n_items = int(episodes)

    def make_item(self, i: int) -> Segment:
        fns = {k: import_path(v) if v else None for k, v in self.specs.items()}
        return record_episode(self.env_id, self.first_seed + i, self.seconds, **fns, **self.kwargs)
