"""``drivegpt rollout``: dream rollouts from held-out logged contexts, batched on the device.

    drivegpt rollout checkpoint=WM.pt data.shards=TOKENS driver=hard_brake n=16 horizon=4

The rollouts themselves (drivers, batches, figures) are ``drivegpt.sim.learned.rollout``; this
stage loads the models, the contexts and (``driver=policy``) the policy, splits the contexts
over ranks and writes under run_dir: ``videos/rollout_XXX.webm`` (+ ``.gif``), ``curves/``,
``rollouts.json`` and ``metrics.json``. Multi-GPU: run it under torchrun (``torchrun
--nproc_per_node=G -m drivegpt rollout run_dir=DIR ...``); rank 0 gathers and writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from drivegpt.rl.checkpoint import load_policy
from drivegpt.runs import atomic_write_json, mark_done, write_metrics
from drivegpt.sim.learned.config import LearnedSimConfig
from drivegpt.sim.learned.contexts import pool_from_shards
from drivegpt.sim.learned.core import SimCore
from drivegpt.sim.learned.models import Models, VehicleModel, load_models
from drivegpt.sim.learned.rollout import DRIVERS, dist_info, rollout_batch, summarize
from drivegpt.sim.learned.video import plot_curves, side_by_side, write_gif, write_webm
from drivegpt.stages.common import bind_fps


def run(cfg: DictConfig) -> dict:
    rank, world, local_rank = dist_info()
    run_dir = Path(str(cfg.run_dir))
    if world > 1:  # ranks may have composed different ${now:} run dirs: use rank 0's
        box = [str(run_dir)]
        torch.distributed.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    bind_fps(cfg)  # learned_sim.fps follows data.fps: the shards' log rate
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
                            vocab_size=models.vocab_size,
                            skip_bad=bool(cfg.data.get("skip_bad", False))).to(sim_cfg.device)
    policy = None
    if driver == "policy":
        if not cfg.get("policy"):
            raise ValueError("driver=policy needs policy=PATH (an rl.policy checkpoint)")
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
