"""``drivegpt/RoadWorld-v0``: the procedural road world as a gymnasium environment.

Observation: {"image": uint8 [H, W, 3] dashcam frame, "speed": float32 [1] m/s}.
Action: Box(2) in [-1, 1] = normalized (desired curvature, desired accel); see
``sim.vehicle`` (x 0.05 1/m, x 4 m/s^2). Reward: -1 on a disengagement, else 0.
Terminated on a disengagement (the ground-truth safety driver takes over), truncated after
``seconds`` or at the end of the generated road. ``info``: world_pose [6], rel_pose [6]
(the move just made, ego frame), lane_offset, heading_error, speed, cause (int, 0 = none),
reason (which rule fired), s (arc length).

    env = gym.make("drivegpt/RoadWorld-v0", height=32, width=64, seconds=20)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from drivegpt.data.schema import Cause

from .config import RoadWorldConfig
from .safety import SafetyDriver
from .world import World


class RoadWorldEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, height: int | None = None, width: int | None = None,
                 seconds: float | None = None, config: Any = None, render_mode: str | None = None,
                 traffic: bool = True, **overrides):
        """``config``: a RoadWorldConfig, dict or OmegaConf node (``cfg.sim``); ``overrides``:
        top-level config keys (e.g. ``safety={"min_ttc": 1.5}``)."""
        if isinstance(config, RoadWorldConfig):
            config = config.to_dict()
        sizes = {k: v for k, v in dict(height=height, width=width, seconds=seconds).items() if v is not None}
        self.cfg = RoadWorldConfig.from_dict(config, **overrides, **sizes)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"RoadWorldEnv: render_mode {render_mode!r} not supported (rgb_array)")
        self.render_mode = render_mode
        self.traffic = traffic
        H, W = self.cfg.height, self.cfg.width
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (H, W, 3), np.uint8),
            "speed": spaces.Box(0.0, 45.0, (1,), np.float32),
            # the cruise set speed a driver gives the car here: the road's limit (rl.evaluate does too)
            "cruise": spaces.Box(0.0, 45.0, (1,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.max_steps = int(round(self.cfg.seconds * self.cfg.fps))
        self.safety = SafetyDriver(self.cfg.safety, self.cfg.dt)
        self.world: World | None = None
        self._image = None

    def _obs(self):
        self._image = self.world.render()
        return {"image": self._image, "speed": np.array([self.world.state[0]], np.float32),
                "cruise": np.array([self.world.road.speed_limit], np.float32)}

    def _info(self, cause=Cause.NONE, m=None):
        w = self.world
        m = m or w.metrics()
        return dict(world_pose=w.world_pose6().astype(np.float32), rel_pose=w.last_rel.astype(np.float32),
                    lane_offset=float(m["lane_offset"]), heading_error=float(m["heading_error"]),
                    speed=float(m["speed"]), s=float(m["s"]), cause=int(cause), reason=self.safety.reason,
                    world_seed=w.seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """``options["world_seed"]`` picks the road directly (else drawn from the env's RNG)."""
        super().reset(seed=seed)
        options = options or {}
        world_seed = options.get("world_seed")
        if world_seed is None:
            world_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.world = World(self.cfg, int(world_seed), traffic=self.traffic)
        self.safety.reset()
        return self._obs(), self._info()

    def step(self, action):
        if self.world is None:
            raise RuntimeError("RoadWorldEnv: call reset() before step()")
        self.world.step(np.asarray(action, dtype=np.float64))
        m = self.world.metrics()
        cause = self.safety.check(m)
        terminated = cause != Cause.NONE
        truncated = (self.world.t >= self.max_steps or self.world.done_road) and not terminated
        reward = -1.0 if terminated else 0.0
        return self._obs(), reward, bool(terminated), bool(truncated), self._info(cause, m)

    def render(self):
        if self.render_mode == "rgb_array":
            return None if self._image is None else self._image.copy()
        return None
