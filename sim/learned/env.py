"""``drivegpt/WorldModel-v0``: the world model as a single gymnasium env.

    env = gym.make("drivegpt/WorldModel-v0", checkpoint="wm.ckpt", shards="tokens/")

Action: Box(-1, 1, (2,)) normalized (desired curvature, desired acceleration), the same as
RoadWorld-v0. Out-of-box actions are clipped (``info["action_clipped"]``); NaN/inf raise.
Observation: {"image": uint8 [H, W, 3] decoded frame, "speed": float32 [1], "cruise": float32 [1]},
or with ``observation="tokens"`` {"tokens": int64 [h, w], "speed", "cruise"}. ``cruise`` is the
episode's cruise set speed in m/s, the start context's segment ``meta.cruise_speed`` (0 when
the fleet log has none).
Any LearnedSimConfig field can be passed as a keyword (``max_steps=100``, ``termination=...``).
Tests and embedders can pass ready objects instead of paths: ``models=Models(...)``,
``contexts=ContextPool``, ``vehicle=VehicleModel``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from drivegpt.sim.learned.config import LearnedSimConfig
from drivegpt.sim.learned.contexts import ContextPool, pool_from_shards
from drivegpt.sim.learned.core import SimCore
from drivegpt.sim.learned.models import Models, VehicleModel, check_compatible, load_models

MAX_SPEED = 100.0  # m/s, observation bound (the logged speed is clamped to [0, MAX_SPEED])


def make_core(num_envs: int, config: LearnedSimConfig | dict | None = None, *,
              models: Models | None = None, contexts: ContextPool | None = None,
              vehicle: VehicleModel | None = None, future: int = 0, **settings) -> SimCore:
    """Build the batched simulator core from a config (+ keyword overrides) or ready objects.
    ``checkpoint=None`` / ``shards=None`` (an env constructor's defaults) keep the config's."""
    settings = {k: v for k, v in settings.items() if v is not None or k not in ("checkpoint", "shards")}
    if isinstance(config, LearnedSimConfig):
        cfg = LearnedSimConfig.from_mapping(vars(config).copy(), **settings)
    else:
        cfg = LearnedSimConfig.from_mapping(config, **settings)
    models = check_compatible(models) if models is not None else load_models(cfg)
    if contexts is None:
        if not cfg.shards:
            raise ValueError("learned_sim.shards: no token shards to draw start contexts from "
                             "(pass shards=PATH)")
        contexts = pool_from_shards(cfg.shards, models.context_frames, cfg.stride, cfg.val_fraction,
                                    future=future, max_contexts=cfg.max_contexts,
                                    grid=models.grid, vocab_size=models.vocab_size,
                                    handbacks=cfg.pool_handbacks)
    return SimCore(cfg, models, contexts, num_envs, vehicle)


def observation_space(core: SimCore) -> spaces.Dict:
    speed = spaces.Box(0.0, MAX_SPEED, (1,), np.float32)
    cruise = spaces.Box(0.0, MAX_SPEED, (1,), np.float32)
    if core.cfg.observation == "tokens":
        return spaces.Dict({"tokens": spaces.Box(0, core.models.vocab_size - 1, (core.h, core.w), np.int64),
                            "speed": speed, "cruise": cruise})
    H, W = core.frame_shape()
    return spaces.Dict({"image": spaces.Box(0, 255, (H, W, 3), np.uint8), "speed": speed, "cruise": cruise})


def batch_obs(core: SimCore, tokens: torch.Tensor, speed: torch.Tensor,
              rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Observation tensors on the device: {"image" [b,H,W,3] | "tokens" [b,h,w], "speed" [b,1],
    "cruise" [b,1]}; ``rows``: the envs these tokens/speeds belong to (default: all)."""
    speed = speed.to(torch.float32).clamp(0.0, MAX_SPEED)[:, None]
    cruise = (core.cruise if rows is None else core.cruise[rows]).to(torch.float32).clamp(0.0, MAX_SPEED)[:, None]
    if core.cfg.observation == "tokens":
        return {"tokens": tokens, "speed": speed, "cruise": cruise}
    return {"image": core.decode(tokens), "speed": speed, "cruise": cruise}


def to_numpy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


class WorldModelEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(self, checkpoint: str | None = None, shards: str | None = None,
                 render_mode: str | None = None, *, config: LearnedSimConfig | dict | None = None,
                 models: Models | None = None, contexts: ContextPool | None = None,
                 vehicle: VehicleModel | None = None, **settings):
        self.core = make_core(1, config, models=models, contexts=contexts, vehicle=vehicle,
                              checkpoint=checkpoint, shards=shards, **settings)
        self.cfg = self.core.cfg
        self.render_mode = render_mode
        self.metadata = dict(self.metadata, render_fps=int(round(1.0 / self.cfg.dt)))
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = observation_space(self.core)
        self._obs: dict | None = None

    def _observe(self, tokens, speed) -> dict:
        obs = to_numpy(batch_obs(self.core, tokens, speed))
        self._obs = {k: v[0] for k, v in obs.items()}
        return self._obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None and self._obs is None:  # first reset without a seed: draw one
            seed = int(self.np_random.integers(0, 2**31 - 1))
        seeds = None if seed is None else torch.tensor([seed], dtype=torch.int64)
        self.core.reset(None, seeds)
        tokens, speed = self.core.current()
        obs = self._observe(tokens, speed)
        return obs, {"context_index": int(self.core.ctx_index[0]),
                     "segment_id": self.core.pool.segment_ids[int(self.core.ctx_index[0])]}

    def step(self, action):
        if self._obs is None:
            raise RuntimeError("WorldModelEnv.step called before reset")
        a = np.asarray(action, dtype=np.float32).reshape(1, 2)
        r = self.core.step(torch.from_numpy(a))
        obs = self._observe(r.tokens, r.speed)
        info = {k: (v[0].item() if v[0].ndim == 0 else v[0].cpu().numpy()) for k, v in r.info.items()}
        return obs, float(r.reward[0]), bool(r.terminated[0]), bool(r.truncated[0]), info

    def render(self):
        if self.render_mode == "rgb_array":
            if self._obs is not None and "image" in self._obs:
                return self._obs["image"]
            tokens, _ = self.core.current()
            return to_numpy(self.core.decode(tokens))[0]
        return None
