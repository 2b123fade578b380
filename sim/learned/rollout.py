"""Dream rollouts from held-out logged contexts, batched on the device (``drivegpt rollout``,
stage ``drivegpt.stages.rollout``).

Drivers: ``logged`` (the logged moves and speeds, fed to the world model directly),
``keep_lane`` (the logged path's curvature at constant speed, through the vehicle model),
``drift_left`` (that + ``drift_curvature`` to the left), ``hard_brake`` (logged curvature,
full braking), ``policy`` (a loaded policy with ``act(frames, speed)`` (and ``cruise=``, the start segment's set speed, when its ``cfg.cruise``), deterministic, on the
last K dreamed frames; the stage loads it from ``policy=PATH``). The stage writes under run_dir:

- ``videos/rollout_XXX.webm`` (+ ``.gif``): dreamed | real (the logged frames, decoded from
  their tokens by the same tokenizer), with a hazard bar;
- ``curves/rollout_XXX.png``: predicted disengagement probabilities over time;
- ``rollouts.json``: per-rollout figures; ``metrics.json``: predicted disengagements per 100 km
  by cause (sum of the per-step event probabilities over distance driven), mean token entropy.

Termination is off in rollouts (``termination=never``): every rollout runs ``seconds`` so the
curves are complete; expected disengagements come from the event probabilities.
Multi-GPU / multi-node: run it under torchrun (``torchrun --nproc_per_node=G -m drivegpt rollout
run_dir=DIR ...``); each rank takes contexts rank::world on cuda:LOCAL_RANK and rank 0 gathers
the figures and writes metrics.json. (torchrun rather than Lightning's predict loop: the work is
a stateful closed loop, not a dataset map, and writes files per rollout.)
"""

from __future__ import annotations

import os

import numpy as np
import torch

from drivegpt.data.schema import CAUSE_NAMES
from drivegpt.sim.learned.contexts import ContextPool
from drivegpt.sim.learned.core import SimCore
from drivegpt.sim.vehicle import achieved

DRIVERS = ("logged", "keep_lane", "drift_left", "hard_brake", "policy")


def dist_info():
    """(rank, world, local_rank); initializes torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


class Driver:
    """Commands for a batch of rollouts at step t: normalized actions [b, 2] (or None for logged)."""

    def __init__(self, kind: str, core: SimCore, fut_pose, fut_speed, drift_curvature: float,
                 policy=None):
        if kind not in DRIVERS:
            raise ValueError(f"driver: {kind!r} is not one of {DRIVERS}")
        if kind == "policy" and policy is None:
            raise ValueError("driver=policy needs policy=PATH (an rl.policy checkpoint)")
        self.kind, self.core, self.policy = kind, core, policy
        self.fut_pose, self.fut_speed = fut_pose, fut_speed  # [b, T, 6] logged move t, [b, T+1] speeds
        self.drift = drift_curvature
        self.frames: list[torch.Tensor] = []

    def observe(self, frame: torch.Tensor) -> None:
        self.frames.append(frame)

    def act(self, t: int) -> torch.Tensor | None:
        if self.kind == "logged":
            return None
        if self.kind == "policy":
            k = int(self.policy.obs_shape[0])
            hist = self.frames[-k:]
            hist = [hist[0]] * (k - len(hist)) + hist
            frames = torch.stack(hist, 1)  # b k H W 3
            with torch.no_grad():
                # the set speed (0: not logged) to a policy that reads it
                kw = {"cruise": self.core.cruise} if getattr(getattr(self.policy, "cfg", None), "cruise", False) else {}
                a = self.policy.act(frames, self.core.speed[:, -1], deterministic=True, **kw)
                a = (a[0] if isinstance(a, tuple) else a).to(torch.float32)
                if hasattr(self.policy, "controls"):  # the policy's jerk envelope, against the car's accel
                    a = self.policy.controls(a, self.core.veh[:, 2])
            return a
        ach = achieved(self.fut_pose[:, t], self.fut_speed[:, t], self.fut_speed[:, t + 1], self.core.cfg.dt)
        curv = ach[:, 0]
        accel = torch.zeros_like(curv)
        if self.kind == "drift_left":
            curv = curv + self.drift
        elif self.kind == "hard_brake":
            accel = torch.full_like(curv, -1e3)  # clipped to full braking
        return self.core.vehicle.normalize(torch.stack([curv, accel], -1)).clamp(-1, 1)


def rollout_batch(core: SimCore, pool: ContextPool, idx: torch.Tensor, steps: int, driver_kind: str,
                  drift_curvature: float = 0.02, policy=None, progress=None) -> dict[str, np.ndarray]:
    """Roll ``len(idx)`` contexts ``steps`` steps. Returns numpy arrays: dreamed/real frames
    [b, T+1, H, W, 3] (frame 0 = last context frame), probs [b, T, n_h, 3], event [b, T, 3],
    entropy [b, T], distance [b, T]."""
    K = core.K
    core.reset(seeds=idx, indices=idx)
    fut_pose = pool.rel_pose[idx, K - 1:K - 1 + steps]  # [b, T, 6] logged move into frame K+t
    fut_speed = pool.speed[idx, K - 1:K + steps]  # [b, T+1]
    drv = Driver(driver_kind, core, fut_pose, fut_speed, drift_curvature, policy)
    first = core.decode(core.tokens[:, -1])
    drv.observe(first)
    dreamed, probs, event, ent, dist = [first], [], [], [], []
    for t in range(steps):
        a = drv.act(t)
        r = core.step_pose(fut_pose[:, t], fut_speed[:, t + 1]) if a is None else core.step(a)
        frame = core.decode(r.tokens)
        drv.observe(frame)
        dreamed.append(frame)
        probs.append(r.info["disengage_probs"]), event.append(r.info["event_probs"])
        ent.append(r.info["uncertainty"]), dist.append(r.info["distance"])
        if progress is not None:
            progress.update(len(idx))
    real_tok = pool.tokens[idx, K - 1:K + steps]  # [b, T+1, h, w]
    real = core.decode(real_tok.flatten(0, 1)).reshape(len(idx), steps + 1, *first.shape[1:])
    out = dict(dreamed=torch.stack(dreamed, 1), real=real, probs=torch.stack(probs, 1),
               event=torch.stack(event, 1), entropy=torch.stack(ent, 1), distance=torch.stack(dist, 1))
    return {k: v.cpu().numpy() for k, v in out.items()}


def summarize(rows: list[dict], driver: str, dt: float) -> dict:
    """Fleet-style figures over rollouts: expected disengagements per 100 km by cause."""
    km = sum(r["km"] for r in rows)
    exp = np.sum([r["expected_disengagements"] for r in rows], axis=0) if rows else np.zeros(3)
    per100 = {name: (float(exp[c]) / km * 100 if km > 0 else None) for c, name in enumerate(CAUSE_NAMES)}
    ent = [r["mean_entropy"] for r in rows if r["mean_entropy"] is not None]
    return {
        "rollout/driver": driver, "rollout/n": len(rows), "rollout/km": km,
        "rollout/seconds": sum(r["seconds"] for r in rows),
        "rollout/disengagements_per_100km": per100,
        "rollout/disengagements_per_100km_total": (float(exp.sum()) / km * 100 if km > 0 else None),
        "rollout/mean_uncertainty": float(np.mean(ent)) if ent else None,
        "rollout/mean_hazard": float(np.mean([r["mean_hazard"] for r in rows])) if rows else None,
        "rollout/p_disengaged_by_end": float(np.mean([r["p_disengaged_by_end"] for r in rows])) if rows else None,
    }
