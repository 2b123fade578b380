"""Rollouts of a policy in the learned simulator, for videos and the sim's figures.

The training stages themselves (behaviour cloning, PPO) are ``drivegpt.stages.train_policy``
(``drivegpt train policy stage=bc|rl``).
"""

from __future__ import annotations

import numpy as np
import torch

from drivegpt.rl.video import caption, upscale


def frame_for_video(obs: dict, info: dict, i: int = 0):
    f = obs["frames"][i, -1].detach().cpu().numpy()
    hz = info.get("hazard") if isinstance(info, dict) else None
    unc = info.get("uncertainty") if isinstance(info, dict) else None
    text = ""
    if hz is not None:
        text += f"hz {float(torch.as_tensor(hz).reshape(-1)[i]):.3f}"
    if unc is not None:
        text += f" unc {float(torch.as_tensor(unc).reshape(-1)[i]):.2f}"
    return caption(upscale(f[None])[0], text) if text else upscale(f[None])[0]


@torch.no_grad()
def final_rollouts(policy, env, steps: int, seed: int) -> dict:
    """Deterministic (mean-action, bottleneck off) rollouts of every env for ``steps`` steps:
    per-env return of the first episode and its frames (for best/worst videos), and per env its
    expected disengagements (``predicted_events``) and metres driven (``distance_m``)."""
    policy.eval()
    obs = env.reset(seed=seed)
    n = env.num_envs
    ret = torch.zeros(n)
    alive = torch.ones(n, dtype=torch.bool)
    frames = [[] for _ in range(n)]
    pred_env, dist_env = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for _ in range(steps):
        mean, _, _ = policy(**obs)
        nobs, r, term, trunc, info = env.step(mean)
        for i in range(n):
            if alive[i]:
                frames[i].append(frame_for_video(obs, info, i))
        ret += r.cpu() * alive
        if "event_prob" in info and "distance" in info:
            pred_env += torch.as_tensor(info["event_prob"]).cpu() * alive
            dist_env += torch.as_tensor(info["distance"]).cpu() * alive
        alive &= ~(term | trunc).cpu()
        obs = nobs
        if not alive.any():
            break
    pred, dist = float(pred_env.sum()), float(dist_env.sum())
    return {"returns": ret.numpy(), "frames": [np.stack(f) for f in frames],
            "predicted_per_100km": pred / (dist / 1000.0) * 100.0 if dist > 0 else float("nan"),
            "km": dist / 1000.0, "predicted_events": pred_env.numpy(), "distance_m": dist_env.numpy()}
