"""``drivegpt eval policy``: closed-loop evaluation in the ground-truth road world.

    drivegpt eval policy policies.rl=runs/rl policies.bc=runs/bc [world_model_checkpoint=WM \
        data.shards=TOKEN_SHARDS] run_dir=runs/eval

The driving (``drivegpt.rl.evaluate.drive``: every controller on the same fixed, seeded,
held-out RoadWorld scenarios under the fleet's takeover protocol) and the metrics
(``drivegpt.rl.metrics``) are library code; this stage picks the controllers from the config,
writes ``metrics.json`` (a row per controller, plus the sim-to-real gap when a world model is
given: predicted disengagements/100 km in the learned sim for the same policy), ``table.md``,
``closed_loop.png`` and a ground-truth driving video per policy. A policy with the same weights
as one already driven (RL that shipped BC) is not driven again: the drive is a seeded function of
the weights, so its figures are the first one's (``same_weights_as`` says so).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from drivegpt.checkpoints import state_sha256
from drivegpt.rl.checkpoint import load_policy
from drivegpt.rl.envs import learned_sim_settings, make_learned_env
from drivegpt.rl.evaluate import BASELINES, drive, plot
from drivegpt.rl.metrics import closed_loop_metrics, markdown_table
from drivegpt.rl.policy import Policy
from drivegpt.rl.train import final_rollouts
from drivegpt.rl.video import caption, upscale, write_video
from drivegpt.runs import atomic_write_text, mark_done, write_metrics
from drivegpt.stages.common import bind_fps


def sim_predicted_rate(policy: Policy, cfg: DictConfig, num_envs: int) -> dict:
    """Expected disengagements/100 km of ``policy`` in the learned sim (events not sampled)."""
    settings = learned_sim_settings(cfg)
    settings["termination"] = "never"
    env = make_learned_env(num_envs, policy.cfg.context_frames, settings, max_jerk=policy.cfg.max_jerk)
    out = final_rollouts(policy, env, int(settings.get("max_steps", 50)), seed=int(cfg.seed))
    return {"predicted_per_100km": out["predicted_per_100km"], "sim_km": out["km"]}


def controllers_of(cfg: DictConfig) -> dict[str, str | None]:
    """name -> policy checkpoint (None for the road world's own baselines)."""
    out: dict[str, str | None] = {}
    pol = OmegaConf.to_container(cfg.policies, resolve=True) if cfg.get("policies") else {}
    for name, path in (pol or {}).items():
        if path:
            out[str(name)] = str(path)
    if cfg.get("checkpoint"):
        out["policy"] = str(cfg.checkpoint)
    for name in cfg.rl.eval.controllers:
        if name in BASELINES:
            out[str(name)] = None
    if not out:
        raise ValueError("eval policy: nothing to evaluate (give policies.NAME=CKPT, checkpoint=CKPT, "
                         "or baselines in rl.eval.controllers)")
    return out


def run(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    bind_fps(cfg)
    e = cfg.rl.eval
    seeds = [int(e.first_seed) + i for i in range(int(e.scenarios))]
    stride = int(cfg.data.stride)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    rows, timing, gap, same_as = {}, {}, {}, {}
    seen: dict[str, str] = {}  # a policy's weights digest -> the first controller with them
    for name, path in controllers_of(cfg).items():
        policy = load_policy(path) if path else None
        # a policy decides at the stride it was trained at (recorded in its checkpoint)
        pstride = int(policy.checkpoint_meta.get("stride", stride)) if policy is not None else stride
        if policy is not None:
            digest = state_sha256(policy.state_dict().items()) + f"/{policy.cfg}/stride={pstride}"
            if digest in seen:  # e.g. RL shipped BC (keep-the-best): the same seeded drive, figure for figure
                first = same_as[name] = seen[digest]
                rows[name], timing[name] = rows[first], 0.0
                if first in gap:
                    gap[name] = gap[first]
                for video in sorted((run_dir / "videos").glob(f"{first}_ground_truth.*")):
                    shutil.copyfile(video, video.with_name(f"{name}_ground_truth{video.suffix}"))
                print(f"eval policy: {name} has the same weights as {first}: its figures are {first}'s")
                continue
            seen[digest] = name
        t0 = time.perf_counter()
        frames = [] if policy is not None else None
        trajs = drive(name, seeds, float(e.seconds), cfg.sim, policy, pstride, device, progress, frames,
                      workers=int(e.get("workers", 1)))
        timing[name] = time.perf_counter() - t0
        if frames:  # the policy driving the ground truth (first scenario), for people to watch
            big = upscale(np.stack([f for f, _ in frames]), min_height=192)
            write_video(run_dir / "videos" / f"{name}_ground_truth",
                        np.stack([caption(f, text) for f, (_, text) in zip(big, frames)]),
                        fps=float(cfg.sim.fps) / pstride)  # the road world's rate
        rows[name] = closed_loop_metrics(trajs)
        if policy is not None and cfg.get("world_model_checkpoint"):
            g = sim_predicted_rate(policy, cfg, int(e.get("sim_envs", 16)))
            g["measured_per_100km"] = rows[name]["per_100km"]
            m = g["measured_per_100km"]
            g["predicted_over_measured"] = g["predicted_per_100km"] / m if m else float("nan")
            gap[name] = g
    md = markdown_table(rows)
    if gap:
        md += "\n| policy | predicted dis/100km (learned sim) | measured dis/100km (ground truth) |\n|---|---:|---:|\n"
        md += "".join(f"| {n} | {g['predicted_per_100km']:.1f} | {g['measured_per_100km']:.1f} |\n"
                      for n, g in gap.items())
    header = (f"# Closed-loop evaluation\n\n{len(seeds)} held-out RoadWorld scenarios (seeds {seeds[0]}.."
              f"{seeds[-1]}), {float(e.seconds):.0f} s each.\n\n")
    atomic_write_text(run_dir / "table.md", header + md)
    plot(rows, run_dir / "closed_loop.png")
    metrics = {"controllers": rows, "sim_to_real": gap, "seeds": seeds, "seconds": float(e.seconds),
               "seconds_per_controller": timing, "same_weights_as": same_as}
    for name, row in rows.items():  # short per-controller summary at the top level (pipeline headline)
        if name not in metrics:
            metrics[name] = {"disengagements_per_100km": row["per_100km"], "speed_ratio": row["speed_ratio"],
                             "km": row["km"]}
    write_metrics(run_dir, metrics)
    mark_done(run_dir, {"stage": "eval_policy"})
    print(header + md)
    return metrics
