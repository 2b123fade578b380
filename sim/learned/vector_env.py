"""The batched learned simulator as a ``gymnasium.vector.VectorEnv``.

    envs = gym.make_vec("drivegpt/WorldModel-v0", num_envs=256, checkpoint=..., shards=...)

State stays on the torch device across steps; one batched world-model step and one batched
decode per ``step``. ``output="torch"`` returns observations, rewards and flags as device
tensors (no numpy round trip at all); the default ``"numpy"`` converts once at the boundary,
as gymnasium expects.

Autoreset: NEXT_STEP (gymnasium 1.x's default; ``metadata["autoreset_mode"]``). When an env
terminates or truncates at step t, the step t+1 call ignores its action, resets it and returns
the first observation of its new episode with reward 0, terminated = truncated = False.
``autoreset_mode="same_step"`` resets in the same call instead and puts the last observation in
``info["final_obs"]`` (with mask ``info["_final_obs"]``).
Seeding: ``reset(seed=s)`` seeds env i with s + i, exactly as ``WorldModelEnv.reset(seed=s+i)``.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from drivegpt.sim.learned.config import LearnedSimConfig
from drivegpt.sim.learned.contexts import ContextPool
from drivegpt.sim.learned.env import batch_obs, make_core, observation_space, to_numpy
from drivegpt.sim.learned.models import Models, VehicleModel


class WorldModelVectorEnv(VectorEnv):
    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, checkpoint: str | None = None, shards: str | None = None,
                 render_mode: str | None = None, *, config: LearnedSimConfig | dict | None = None,
                 models: Models | None = None, contexts: ContextPool | None = None,
                 vehicle: VehicleModel | None = None, **settings):
        self.core = make_core(num_envs, config, models=models, contexts=contexts, vehicle=vehicle,
                              checkpoint=checkpoint, shards=shards, **settings)
        self.cfg = self.core.cfg
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        mode = AutoresetMode.NEXT_STEP if self.cfg.autoreset_mode == "next_step" else AutoresetMode.SAME_STEP
        self.metadata = dict(self.metadata, autoreset_mode=mode, render_fps=int(round(1.0 / self.cfg.dt)))
        self.single_action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = observation_space(self.core)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        dev = self.core.device
        self._autoreset = torch.zeros(self.num_envs, dtype=torch.bool, device=dev)
        self._started = False
        self._last_obs = None

    def _out(self, x):
        return to_numpy(x) if self.cfg.output == "numpy" else x

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None and not self._started:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        seeds = None
        if seed is not None:
            seeds = (torch.arange(self.num_envs, dtype=torch.int64) + int(seed)
                     if isinstance(seed, (int, np.integer)) else torch.as_tensor(list(seed), dtype=torch.int64))
            if seeds.numel() != self.num_envs:
                raise ValueError(f"reset(seed=...): {seeds.numel()} seeds for {self.num_envs} envs")
        self.core.reset(None, seeds)
        self._started = True
        self._autoreset.zero_()
        tokens, speed = self.core.current()
        obs = batch_obs(self.core, tokens, speed)
        self._last_obs = obs
        info = {"context_index": self.core.ctx_index.clone()}
        return self._out(obs), self._out(info)

    def step(self, actions):
        if not self._started:
            raise RuntimeError("WorldModelVectorEnv.step called before reset")
        core = self.core
        a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions,
                            dtype=torch.float32, device=core.device).reshape(self.num_envs, 2)
        resetting = self._autoreset
        if self.cfg.autoreset_mode == "next_step" and bool(resetting.any()):
            a = torch.where(resetting[:, None], torch.zeros_like(a), a)  # their actions are ignored
        r = core.step(a)
        done = r.terminated | r.truncated
        reward, term, trunc = r.reward, r.terminated, r.truncated
        info = dict(r.info)
        if self.cfg.autoreset_mode == "next_step":
            if bool(resetting.any()):
                core.reset(resetting, None)  # the newest frame of the others is r.tokens
                zero = torch.zeros_like(reward)
                reward = torch.where(resetting, zero, reward)
                term, trunc = term & ~resetting, trunc & ~resetting
                info["context_index"] = core.ctx_index.clone()
            info["autoreset"] = resetting.clone()  # their other info entries are of the discarded step
            obs = batch_obs(core, *core.current())  # one batched decode
            self._autoreset = term | trunc
        else:  # same_step
            obs = batch_obs(core, r.tokens, r.speed)
            if bool(done.any()):
                info["final_obs"] = {k: v.clone() for k, v in obs.items()}
                info["_final_obs"] = done.clone()
                core.reset(done, None)
                tokens, speed = core.current()
                idx = done.nonzero().flatten()
                fresh = batch_obs(core, tokens[idx], speed[idx], idx)  # decode only the reset envs
                obs = {k: v.index_copy(0, idx, fresh[k].to(v.dtype)) for k, v in obs.items()}
        self._last_obs = obs
        return self._out(obs), self._out(reward), self._out(term), self._out(trunc), self._out(info)

    def render(self):
        if self.render_mode != "rgb_array" or self._last_obs is None:
            return None
        if "image" in self._last_obs:
            return to_numpy(self._last_obs["image"])
        return to_numpy(self.core.decode(self.core.current()[0]))
