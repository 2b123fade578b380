"""Environment adapters for the policy: frame history on the device, the learned sim for PPO.

``FrameHistoryVecEnv`` wraps a batched env whose observations are {"image" [n H W 3] uint8,
"speed" [n] or [n 1], optionally "cruise" [n] or [n 1]} (``sim.learned.WorldModelVectorEnv`` with ``output="torch"`` and
``autoreset_mode="same_step"``) and turns them into the policy's observation
{"frames" [n K H W 3] uint8, "speed" [n] float32, "cruise" [n] float32 (m/s, 0 = unknown)},
all on the env's device. At (auto)reset the
history is filled from the start context the learned sim began from (the last K logged frames,
decoded) when the env exposes it, else by repeating the first frame. ``info["final_obs"]``
(SAME_STEP autoreset) is passed on in the policy's format: the K frames each done episode
ended on, its final speed and its set speed.
"""

from __future__ import annotations

from typing import Any

import torch

from drivegpt.settings import plain
from drivegpt.sim.learned import WorldModelVectorEnv
from drivegpt.sim.vehicle import limit_jerk


def _t(x, device, dtype=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


def _cruise(x, device, n: int) -> torch.Tensor:
    """The cruise set speed [n] in m/s (0: not logged, which the policy reads as unknown)."""
    return _t(x, device, torch.float32).reshape(n)


class FrameHistoryVecEnv:
    def __init__(self, env, context_frames: int, device: str | torch.device | None = None,
                 max_jerk: float | None = None):
        self.env = env
        self.k = int(context_frames)
        # the policy's longitudinal comfort envelope (rl.policy.max_jerk), applied to each action
        # against the car's accel in the sim, as the closed loop applies it (Policy.controls)
        self.max_jerk = None if max_jerk is None else float(max_jerk)
        if self.max_jerk is not None and getattr(getattr(env, "core", None), "veh", None) is None:
            raise ValueError("rl.policy.max_jerk needs the car's accel: the env has no learned-sim core "
                             "(core.veh); set rl.policy.max_jerk=null for this env")
        self.num_envs = int(env.num_envs)
        core = getattr(env, "core", None)
        self.device = torch.device(device) if device is not None else (
            getattr(core, "device", None) or torch.device("cpu"))
        self.frames: torch.Tensor | None = None

    def _context_frames(self, mask: torch.Tensor) -> torch.Tensor | None:
        """Decoded last K context frames [m K H W 3] of the envs in ``mask`` (learned sim only).
        Cached per start context (``core.ctx_index``): right after a reset an env's tokens are
        its pool window's, so each window is decoded once, not at every episode start."""
        core = getattr(self.env, "core", None)
        if core is None or not hasattr(core, "tokens") or not hasattr(core, "decode"):
            return None
        ctx = getattr(core, "ctx_index", None)
        pool = getattr(core, "pool", None)
        if ctx is not None and pool is not None:
            if getattr(self, "_cache_pool", None) is not pool:
                self._cache_pool, self._cache = pool, {}
            idx = ctx[mask.to(ctx.device)].tolist()
            missing = sorted({i for i in idx if i not in self._cache})
            if missing:
                sub = torch.zeros_like(mask)
                first = {}
                for j, i in enumerate(ctx.tolist()):
                    if bool(mask[j]) and i in missing and i not in first:
                        first[i] = j
                        sub[j] = True
                dec = self._decode_last(core, sub)
                for row, i in enumerate(sorted(first, key=first.get)):
                    self._cache[i] = dec[row]
            return torch.stack([self._cache[i] for i in idx])
        return self._decode_last(core, mask)

    def _decode_last(self, core, mask: torch.Tensor) -> torch.Tensor:
        toks = core.tokens[mask.to(core.tokens.device)]  # [m Kc h w]
        kc = toks.shape[1]
        take = toks[:, max(0, kc - self.k):]
        m, kk = take.shape[:2]
        frames = core.decode(take.reshape(m * kk, *take.shape[2:])).to(self.device)
        frames = frames.reshape(m, kk, *frames.shape[1:])
        if kk < self.k:
            pad = frames[:, :1].expand(m, self.k - kk, *frames.shape[2:])
            frames = torch.cat([pad, frames], 1)
        return frames

    def _fill(self, mask: torch.Tensor, image: torch.Tensor):
        ctx = self._context_frames(mask)
        if ctx is None:
            ctx = image[mask][:, None].expand(-1, self.k, -1, -1, -1)
        self.frames[mask] = ctx

    def _obs(self, obs) -> dict[str, torch.Tensor]:
        speed = _t(obs["speed"], self.device, torch.float32).reshape(self.num_envs)
        out = {"frames": self.frames.clone(), "speed": speed}
        if "cruise" in obs:
            out["cruise"] = _cruise(obs["cruise"], self.device, self.num_envs)
        return out

    def reset(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        obs, _ = self.env.reset(seed=seed)
        image = _t(obs["image"], self.device, torch.uint8)
        self.frames = torch.zeros(self.num_envs, self.k, *image.shape[1:], dtype=torch.uint8, device=self.device)
        self._fill(torch.ones(self.num_envs, dtype=torch.bool, device=self.device), image)
        return self._obs(obs)

    def step(self, action: torch.Tensor):
        if self.max_jerk is not None:
            veh = self.env.core.veh
            action = limit_jerk(_t(action, veh.device, torch.float32), veh[:, 2], self.max_jerk)
        obs, reward, term, trunc, info = self.env.step(action)
        image = _t(obs["image"], self.device, torch.uint8)
        term = _t(term, self.device, torch.bool).reshape(self.num_envs)
        trunc = _t(trunc, self.device, torch.bool).reshape(self.num_envs)
        done = term | trunc
        info = dict(info) if isinstance(info, dict) else {}
        final = info.get("final_obs")
        if bool(done.any()) and isinstance(final, dict) and "image" in final:
            # the observation each done episode ended on, in the policy's format (PPO bootstraps
            # a truncated episode from its value)
            fimg = _t(final["image"], self.device, torch.uint8)
            fspeed = _t(final["speed"], self.device, torch.float32).reshape(self.num_envs)
            info["final_obs"] = {"frames": torch.cat([self.frames[:, 1:], fimg[:, None]], 1), "speed": fspeed}
            if "cruise" in final:
                info["final_obs"]["cruise"] = _cruise(final["cruise"], self.device, self.num_envs)
        self.frames = torch.cat([self.frames[:, 1:], image[:, None]], 1)
        if bool(done.any()):
            self._fill(done, image)
        return self._obs(obs), _t(reward, self.device, torch.float32).reshape(self.num_envs), term, trunc, info


def learned_sim_settings(cfg) -> dict[str, Any]:
    """LearnedSimConfig settings for RL from a stage config: the ``learned_sim`` group, ``rl.sim``
    on top (RL's own episode settings), the world model and the token shards."""
    s = plain(cfg.get("learned_sim"))
    s.update(plain(cfg.rl.get("sim")))
    if cfg.get("world_model_checkpoint"):
        s["checkpoint"] = str(cfg.world_model_checkpoint)
    shards = cfg.data.get("shards") if "shards" in cfg.data else None
    if shards and shards != "???" and not s.get("shards"):
        s["shards"] = str(shards)
    s.setdefault("val_fraction", float(cfg.data.val_fraction))
    if s.get("fps") is None:  # data.fps: null = the shards' meta.fps (stages set it with bind_fps)
        if cfg.data.get("fps") is not None:
            s["fps"] = float(cfg.data.fps)
        elif s.get("shards"):
            from drivegpt.data.shard_reading import shards_fps

            s["fps"] = shards_fps(s["shards"])[0]
        else:
            s["fps"] = float(cfg.get("sim", {}).get("fps", 20.0))
    s.setdefault("stride", int(cfg.data.stride))
    s["output"] = "torch"
    s["autoreset_mode"] = "same_step"
    return s


def make_learned_env(num_envs: int, context_frames: int, settings: dict[str, Any] | None = None,
                     max_jerk: float | None = None, **objects):
    """The batched learned sim (torch output, SAME_STEP autoreset) with the policy's frame history
    and its jerk envelope (``max_jerk``: the policy's ``cfg.max_jerk``).

    ``objects``: ready ``models`` / ``contexts`` / ``vehicle`` (tests pass fakes)."""

    settings = dict(settings or {})
    settings.update(output="torch", autoreset_mode="same_step")
    env = WorldModelVectorEnv(num_envs=num_envs, **objects, **settings)
    return FrameHistoryVecEnv(env, context_frames, max_jerk=max_jerk)
