"""``drivegpt rollout``: dream rollouts from held-out logged contexts, batched on the device.

    drivegpt rollout checkpoint=WM.pt data.shards=TOKENS driver=hard_brake n=16 horizon=4

Drivers: ``logged`` (the logged moves and speeds, fed to the world model directly),
``keep_lane`` (the logged path's curvature at constant speed, through the vehicle model),
``drift_left`` (that + ``drift_curvature`` to the left), ``hard_brake`` (logged curvature,
full braking), ``policy`` (``policy=PATH``, an rl.policy checkpoint, deterministic, on the
last K dreamed frames). Writes under run_dir:

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

import math
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from drivegpt.data.schema import CAUSE_NAMES
from drivegpt.runs import atomic_write_json, mark_done, write_metrics
from drivegpt.sim.learned.config import LearnedSimConfig
from drivegpt.sim.learned.contexts import ContextPool, pool_from_shards
from drivegpt.sim.learned.core import SimCore
from drivegpt.sim.learned.models import Models, VehicleModel, load_models
from drivegpt.sim.learned.video import plot_curves, side_by_side, write_gif, write_webm

DRIVERS = ("logged", "keep_lane", "drift_left", "hard_brake", "policy")


def _dist():
    """(rank, world, local_rank); initializes torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _achieved(rel: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor, dt: float) -> torch.Tensor:
    from drivegpt.sim.vehicle import achieved

    return achieved(rel, v0, v1, dt)


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
                a = self.policy.act(frames, self.core.speed[:, -1], deterministic=True)
            return (a[0] if isinstance(a, tuple) else a).to(torch.float32)
        ach = _achieved(self.fut_pose[:, t], self.fut_speed[:, t], self.fut_speed[:, t + 1], self.core.cfg.dt)
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


def run(cfg: DictConfig) -> dict:
    from tqdm.auto import tqdm

    rank, world, local_rank = _dist()
    run_dir = Path(str(cfg.run_dir))
    if world > 1:  # ranks may have composed different ${now:} run dirs: use rank 0's
        box = [str(run_dir)]
        torch.distributed.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    ls = OmegaConf.to_container(cfg.learned_sim, resolve=True)
    if ls.get("device") == "auto":
        ls["device"] = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    driver = str(cfg.driver)
    if driver not in DRIVERS:
        raise ValueError(f"driver: {driver!r} is not one of {DRIVERS}")
    sim_cfg = LearnedSimConfig.from_mapping(ls, checkpoint=cfg.checkpoint, shards=cfg.data.shards,
                                            termination="never")
    steps = max(1, int(round(float(cfg.horizon) / sim_cfg.dt)))
    sim_cfg = LearnedSimConfig.from_mapping(vars(sim_cfg).copy(), max_steps=steps + 1)
    models: Models = load_models(sim_cfg)
    pool = pool_from_shards(sim_cfg.shards, models.context_frames, sim_cfg.stride, sim_cfg.val_fraction,
                            future=steps, max_contexts=int(cfg.n), grid=models.grid,
                            vocab_size=models.vocab_size).to(sim_cfg.device)
    policy = None
    if driver == "policy":
        if not cfg.get("policy"):
            raise ValueError("driver=policy needs policy=PATH (an rl.policy checkpoint)")
        from drivegpt.rl.policy import load_policy

        policy = load_policy(str(cfg.policy)).to(sim_cfg.device).eval()
    vehicle = VehicleModel(overrides=sim_cfg.vehicle)
    mine = list(range(rank, len(pool), world))
    bs = int(cfg.batch_size)
    rows, videos = [], []
    bar = tqdm(total=len(mine) * steps, desc=f"rollout {driver}", unit="step", disable=rank != 0)
    for start in range(0, len(mine), bs):
        ids = mine[start:start + bs]
        core = SimCore(sim_cfg, models, pool, len(ids), vehicle)
        idx = torch.tensor(ids, dtype=torch.int64, device=core.device)
        out = rollout_batch(core, pool, idx, steps, driver, float(cfg.drift_curvature), policy, bar)
        times = np.arange(1, steps + 1) * sim_cfg.dt
        for j, i in enumerate(ids):
            event = out["event"][j]
            row = {
                "index": i, "segment_id": pool.segment_ids[i], "start": pool.starts[i],
                "seconds": steps * sim_cfg.dt, "km": float(out["distance"][j].sum()) / 1000.0,
                "expected_disengagements": event.sum(0).tolist(),
                "p_disengaged_by_end": float(1 - np.prod(1 - event)),
                "mean_hazard": float(out["probs"][j].mean()),
                "mean_entropy": (float(np.nanmean(out["entropy"][j]))
                                 if np.isfinite(out["entropy"][j]).any() else None),
            }
            if i < int(cfg.videos):
                name = f"rollout_{i:03d}"
                hazard = np.concatenate([[0.0], 1 - np.prod(1 - out["probs"][j][:, models.horizons.index(
                    max(models.horizons))], axis=-1)])
                frames = side_by_side(out["dreamed"][j], out["real"][j], hazard)
                fps = 1.0 / sim_cfg.dt
                webm = write_webm(run_dir / "videos" / f"{name}.webm", frames, fps)
                write_gif(run_dir / "videos" / f"{name}.gif", frames, fps)
                plot_curves(run_dir / "curves" / f"{name}.png", times, out["probs"][j], event,
                            models.horizons, f"{driver} | {pool.segment_ids[i]} @ {pool.starts[i]}")
                row.update(video=str(webm) if webm else None, gif=f"videos/{name}.gif",
                           curve=f"curves/{name}.png")
                videos.append(name)
            rows.append(row)
    bar.close()
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, rows)
        rows = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    metrics = summarize(rows, driver, sim_cfg.dt)
    metrics["rollout/videos"] = len([r for r in rows if r.get("gif")])
    if rank == 0:
        atomic_write_json(run_dir / "rollouts.json", rows)
        write_metrics(run_dir, metrics)
        mark_done(run_dir, {"stage": "rollout"})
    return metrics
