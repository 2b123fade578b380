"""The batched state machine of the learned simulator; every tensor stays on ``cfg.device``.

Per env b: the token context window ``tokens [b, K, h, w]``, the pose/speed history
``rel_pose [b, K, 6]`` (pose from kept frame k to k+1; slot K-1 receives the commanded move)
and ``speed [b, K]``, the vehicle state ``veh [b, 3]`` = (speed, curvature, accel), the step
count, and the env's seed/episode counters.

One step: normalized action [b, 2] (NaN -> ValueError; outside [-1, 1] -> clipped, flagged in
``info["action_clipped"]``) -> vehicle model (``stride`` sub-steps at the log rate, poses
composed in SE(3)) -> relative pose + speed -> ``sampling.step`` -> next tokens and
disengagement probabilities p [b, n_horizons, 3] -> reward / termination:

    reward = -sum_{h,c} horizon_weights[h] * cause_weights[c] * p[b, h, c]
             - comfort_weight * ((lat_accel / lat_accel_scale)^2 + (jerk / jerk_scale)^2)
             - uncertainty_weight * uncertainty

Per-step event probability per cause, from the shortest horizon h0 assuming a constant hazard:
q_c = 1 - (1 - p[h0, c]) ** (dt / h0). ``termination``: "sample" draws the event (IRIS-style),
"threshold" ends when 1 - prod(1 - q_c) > threshold, "never" leaves it to the reward.
Random draws (start context, domain randomization, termination) come from a counter-based
hash of (env seed, episode, step), so an env in a batch draws exactly what it draws alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from drivegpt.sim.learned.config import LearnedSimConfig
from drivegpt.sim.learned.contexts import ContextPool
from drivegpt.sim.learned.geometry import compose, uniform
from drivegpt.sim.learned.models import Models, ModelMismatchError, VehicleModel


@dataclass
class StepResult:
    tokens: torch.Tensor       # int64 [b, h, w] the new frame
    speed: torch.Tensor        # float32 [b]
    reward: torch.Tensor       # float32 [b]
    terminated: torch.Tensor   # bool [b]
    truncated: torch.Tensor    # bool [b]
    info: dict[str, torch.Tensor]


class SimCore:
    def __init__(self, cfg: LearnedSimConfig, models: Models, pool: ContextPool, num_envs: int,
                 vehicle: VehicleModel | None = None):
        self.cfg, self.models, self.b = cfg, models, int(num_envs)
        self.device = dev = torch.device(cfg.device)
        self.K = K = models.context_frames
        self.h, self.w = models.grid
        if pool.context_frames != K:
            raise ModelMismatchError(f"start contexts have {pool.context_frames} frames, the world "
                                     f"model {models.source} needs context_frames={K}")
        if tuple(pool.tokens.shape[-2:]) != (self.h, self.w):
            raise ModelMismatchError(f"start contexts have token grid {tuple(pool.tokens.shape[-2:])}, "
                                     f"the world model {models.source} grid {(self.h, self.w)}")
        self.pool = pool
        self.vehicle = vehicle or VehicleModel(overrides=cfg.vehicle)
        nh = len(models.horizons)
        hw = cfg.horizon_weights if cfg.horizon_weights is not None else [1.0 / nh] * nh
        if len(hw) != nh:
            raise ValueError(f"learned_sim.horizon_weights: {len(hw)} weights, the world model "
                             f"predicts {nh} horizons {models.horizons}")
        # weights [n_horizons, 3]
        self.weights = torch.tensor(hw, device=dev)[:, None] * torch.tensor(cfg.cause_weights, device=dev)[None, :]
        self.h0 = min(models.horizons)
        self.i0 = models.horizons.index(self.h0)
        if models.fps is not None and abs(models.fps * cfg.dt - 1.0) > 1e-6:
            raise ModelMismatchError(
                f"learned_sim.stride/fps: a step of {cfg.dt:g} s ({cfg.stride} frames at {cfg.fps:g} Hz) "
                f"but the world model {models.source} reads frames at {models.fps:g} Hz")
        self.has_entropy = models.step_supports("return_entropy")
        self.tf_entropy = cfg.entropy and not self.has_entropy and models.can_teacher_force
        if cfg.uncertainty_weight > 0 and not (self.has_entropy or self.tf_entropy or models.ensemble):
            raise ValueError("learned_sim.uncertainty_weight > 0 needs an uncertainty signal: a "
                             "sampling.step with return_entropy or learned_sim.ensemble checkpoints")
        self.dr_keys = sorted(cfg.domain_randomization)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(0)
        b = self.b
        self.tokens = torch.zeros(b, K, self.h, self.w, dtype=torch.int64, device=dev)
        # the newest frame as the world model made it (the window's last frame is its round trip with retokenize)
        self.newest = torch.zeros(b, self.h, self.w, dtype=torch.int64, device=dev)
        self.rel_pose = torch.zeros(b, K, 6, device=dev)
        self.speed = torch.zeros(b, K, device=dev)
        self.cruise = torch.zeros(b, device=dev)  # the episode's cruise set speed, m/s (0: unknown)
        self.veh = torch.zeros(b, 3, device=dev)
        self.t = torch.zeros(b, dtype=torch.int64, device=dev)
        self.seed = torch.arange(b, dtype=torch.int64, device=dev)
        self.episode = torch.zeros(b, dtype=torch.int64, device=dev)
        self.ctx_index = torch.zeros(b, dtype=torch.int64, device=dev)
        self.dr_u = torch.full((b, max(len(self.dr_keys), 1)), 0.5, device=dev)
        self.params, self.gain = self.vehicle.params(None, {})
        if self.dr_keys:  # fail now, not mid-episode, if the vehicle model can't take per-env values
            try:
                p, g = self.vehicle.params(torch.rand(b, len(self.dr_keys), device=dev), cfg.domain_randomization)
                self.vehicle.step(self.veh, torch.zeros(b, 2, device=dev), 1.0 / cfg.fps, p, g)
            except Exception as e:  # noqa: BLE001 - re-raised naming the setting
                raise ValueError(f"learned_sim.domain_randomization {self.dr_keys}: sim.vehicle.step "
                                 f"cannot randomize these fields per env ({e})") from None

    @property
    def pool(self) -> ContextPool:
        """The start contexts (assigning one moves it to the device and indexes its handbacks)."""
        return self._pool

    @pool.setter
    def pool(self, pool: ContextPool) -> None:
        self._pool = pool.to(self.device)
        self.handback_idx = self._pool.handback_indices()
        is_back = torch.zeros(len(self._pool), dtype=torch.bool, device=self.device)
        is_back[self.handback_idx] = True
        self.plain_idx = (~is_back).nonzero().flatten()

    # ------------------------------------------------------------------ reset
    def reset(self, mask: torch.Tensor | None = None, seeds: torch.Tensor | None = None,
              indices: torch.Tensor | None = None) -> None:
        """Reset the envs in ``mask`` [b] bool (all if None). ``seeds`` [b] int64 restarts their
        random streams; without seeds they move on to their next episode. ``indices`` [b]: start
        from these pool contexts instead of seeded draws (offline rollouts)."""
        dev, K = self.device, self.K
        mask = torch.ones(self.b, dtype=torch.bool, device=dev) if mask is None else mask.to(dev)
        if seeds is not None:
            seeds = torch.as_tensor(seeds, dtype=torch.int64, device=dev)
            self.seed = torch.where(mask, seeds, self.seed)
            self.episode = torch.where(mask, torch.zeros_like(self.episode), self.episode)
            self.generator.manual_seed(int(seeds[mask][0]) if bool(mask.any()) else 0)
        else:
            self.episode = torch.where(mask, self.episode + 1, self.episode)
        n = len(self.pool)
        u = uniform(self.seed, self.episode, 0)
        idx = (u * n).long().clamp_max(n - 1)
        if self.handback_idx.numel() and self.plain_idx.numel():
            # handback_fraction of the episodes start at a handback window, the rest at an engaged one
            def pick(sub):
                return sub[(u * len(sub)).long().clamp_max(len(sub) - 1)]

            from_back = uniform(self.seed, self.episode, 0, 1) < self.cfg.handback_fraction
            idx = torch.where(from_back, pick(self.handback_idx), pick(self.plain_idx))
        if indices is not None:
            idx = torch.as_tensor(indices, dtype=torch.int64, device=dev)
        self.ctx_index = torch.where(mask, idx, self.ctx_index)
        m4 = mask[:, None, None, None]
        self.tokens = torch.where(m4, self.pool.tokens[idx, :K], self.tokens)
        self.newest = torch.where(mask[:, None, None], self.tokens[:, -1], self.newest)
        self.rel_pose = torch.where(mask[:, None, None], self.pool.rel_pose[idx, :K], self.rel_pose)
        self.speed = torch.where(mask[:, None], self.pool.speed[idx, :K], self.speed)
        self.cruise = torch.where(mask, self.pool.cruise_at(idx), self.cruise)
        # vehicle state from the logged history: speed now, curvature and accel of the last move
        last = self.pool.rel_pose[idx, K - 2] if K >= 2 else torch.zeros_like(self.rel_pose[:, 0])
        dist = last[:, :2].norm(dim=-1)
        curv = torch.where(dist > 1e-3, last[:, 5] / dist.clamp_min(1e-3), torch.zeros_like(dist))
        sp = self.pool.speed[idx, :K]
        acc = (sp[:, -1] - sp[:, -2]) / self.cfg.dt if K >= 2 else torch.zeros_like(dist)
        veh = torch.stack([sp[:, -1], curv, acc], -1)
        self.veh = torch.where(mask[:, None], veh, self.veh)
        self.t = torch.where(mask, torch.zeros_like(self.t), self.t)
        if self.dr_keys:
            u = torch.stack([uniform(self.seed, self.episode, 100 + j)
                             for j in range(len(self.dr_keys))], -1)
            self.dr_u = torch.where(mask[:, None], u, self.dr_u)
            self.params, self.gain = self.vehicle.params(self.dr_u, self.cfg.domain_randomization)

    # ------------------------------------------------------------------ step
    def check_action(self, action) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (clipped action float32 [b, 2] on the device, clipped flag [b]). NaN raises."""
        a = torch.as_tensor(action, dtype=torch.float32, device=self.device)
        if a.shape != (self.b, 2):
            a = a.reshape(self.b, 2) if a.numel() == self.b * 2 else a
            if a.shape != (self.b, 2):
                raise ValueError(f"action: shape {tuple(a.shape)}, expected ({self.b}, 2) "
                                 "(normalized desired curvature, desired acceleration)")
        bad = ~torch.isfinite(a).all(-1)
        if bool(bad.any()):
            envs = bad.nonzero().flatten().tolist()
            raise ValueError(f"action: NaN or inf for env(s) {envs}; the action space is Box(-1, 1, (2,))")
        clipped = (a.abs() > 1.0).any(-1)
        return a.clamp(-1.0, 1.0), clipped

    def step(self, action) -> StepResult:
        a, clipped = self.check_action(action)
        sub = self.cfg.stride
        move = None
        veh = self.veh
        for _ in range(sub):  # vehicle model at the log rate, composed over the stride
            veh, rel = self.vehicle.step(veh, a, 1.0 / self.cfg.fps, self.params, self.gain)
            move = rel if move is None else compose(move, rel)
        prev = self.veh
        self.veh = veh.to(torch.float32)
        res = self.step_pose(move.to(torch.float32), self.veh[:, 0],
                             curvature=self.veh[:, 1], accel=self.veh[:, 2], prev_accel=prev[:, 2])
        res.info["action_clipped"] = clipped
        return res

    def step_pose(self, move: torch.Tensor, new_speed: torch.Tensor, curvature=None, accel=None,
                  prev_accel=None) -> StepResult:
        """Advance every env by a commanded relative pose [b, 6] and new speed [b] (used directly
        by the logged-pose driver)."""
        cfg, K, dev = self.cfg, self.K, self.device
        dt = cfg.dt
        rel = torch.cat([self.rel_pose[:, : K - 1], move[:, None]], 1)  # [b, K, 6]
        kw = dict(temperature=cfg.temperature, top_k=cfg.top_k, cfg_scale=cfg.cfg_scale,
                  generator=self.generator)
        with torch.no_grad():
            if self.has_entropy:
                nxt, probs, entropy = self.models.step_fn(self.models.world_model, self.tokens, rel,
                                                          self.speed, return_entropy=True, **kw)
            else:
                nxt, probs = self.models.step_fn(self.models.world_model, self.tokens, rel, self.speed, **kw)
                if self.tf_entropy:
                    entropy = self.models.entropy(self.tokens, rel, self.speed, nxt)
                else:
                    entropy = torch.full((self.b,), float("nan"), device=dev)
            info: dict[str, torch.Tensor] = {}
            if self.models.ensemble:
                gkw = dict(kw, temperature=0.0)
                outs = [self.models.step_fn(m, self.tokens, rel, self.speed, **gkw)[:2]
                        for m in self.models.ensemble]
                info["token_disagreement"] = torch.stack(
                    [(o[0] != nxt).float().mean((1, 2)) for o in outs]).mean(0)
                info["hazard_disagreement"] = torch.stack(
                    [(o[1] - probs).abs().amax((1, 2)) for o in outs]).mean(0)
        nxt, probs = nxt.to(dev, torch.int64), probs.to(dev, torch.float32)
        # shift the window: drop the oldest frame, append the new one (or what the tokenizer makes of it)
        read = self.models.tokenizer.retokenize(nxt).to(dev, torch.int64) if cfg.retokenize else nxt
        self.tokens = torch.cat([self.tokens[:, 1:], read[:, None]], 1)
        self.newest = nxt
        self.rel_pose = torch.cat([rel[:, 1:], torch.zeros_like(rel[:, :1])], 1)
        prev_speed = self.speed[:, -1]
        self.speed = torch.cat([self.speed[:, 1:], new_speed[:, None].to(torch.float32)], 1)
        self.t = self.t + 1

        dist = move[:, :2].norm(dim=-1)
        if curvature is None:
            curvature = torch.where(dist > 1e-3, move[:, 5] / dist.clamp_min(1e-3), torch.zeros_like(dist))
        if accel is None:
            accel = (new_speed - prev_speed) / dt
        if prev_accel is None:
            prev_accel = accel
        lat = new_speed**2 * curvature
        jerk = (accel - prev_accel) / dt
        hazard = (probs * self.weights).sum((1, 2))
        comfort = (lat / cfg.lat_accel_scale) ** 2 + (jerk / cfg.jerk_scale) ** 2
        if self.has_entropy or self.tf_entropy:
            unc = entropy.to(dev, torch.float32)
        elif self.models.ensemble:
            unc = info["token_disagreement"]
        else:
            unc = entropy
        reward = -hazard - cfg.comfort_weight * comfort - cfg.uncertainty_weight * torch.nan_to_num(unc)

        q = 1.0 - (1.0 - probs[:, self.i0].clamp(0, 1)) ** (dt / self.h0)  # [b, 3] per-step event prob
        q_any = 1.0 - (1.0 - q).prod(-1)
        if cfg.termination == "sample":
            u = uniform(self.seed, self.episode, self.t, 1)
            event = u < q_any
            u2 = uniform(self.seed, self.episode, self.t, 2) * q.sum(-1)
            cause = (q.cumsum(-1) < u2[:, None]).sum(-1).clamp_max(2) + 1
        elif cfg.termination == "threshold":
            event = q_any > cfg.threshold
            cause = q.argmax(-1) + 1
        else:
            event = torch.zeros_like(q_any, dtype=torch.bool)
            cause = q.argmax(-1) + 1
        cause = torch.where(event, cause, torch.zeros_like(cause))
        truncated = (self.t >= cfg.max_steps) & ~event
        # event_probs [b 3]: this step's event probability per cause; event_prob [b]: of any cause (the
        # figure RL's metrics, keep-the-best and the final rollouts sum into predicted events per km)
        info.update(disengage_probs=probs, event_probs=q, event_prob=q_any, hazard=hazard, uncertainty=unc,
                    entropy=entropy.to(dev, torch.float32), cause=cause, distance=dist,
                    comfort=comfort, lat_accel=lat, jerk=jerk, step=self.t.clone(),
                    context_index=self.ctx_index.clone())
        return StepResult(nxt, self.speed[:, -1].clone(), reward.to(torch.float32), event,
                          truncated, info)

    def current(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens of the newest frame [b, h, w], as generated, speed [b])."""
        return self.newest, self.speed[:, -1]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [b, h, w] -> uint8 frames [b, H, W, 3] on the device (one batched decode)."""
        with torch.no_grad():
            return torch.as_tensor(self.models.tokenizer.decode(tokens)).to(self.device, torch.uint8)

    def frame_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.models.tokenizer.frame_size)


__all__ = ["SimCore", "StepResult"]
