"""Policy checkpoints: plain ``torch.save`` artifacts (``drivegpt.checkpoints``) with
``kind="drivegpt-policy"``, the ``PolicyConfig``, the observation shape ``[K, H, W, 3]``, the
weights and a free ``meta`` dict. ``load_policy`` also reads a run directory (``policy.pt``
inside) or a Lightning checkpoint of the BC module, and raises a clear error naming the file for
another kind of checkpoint or a different observation shape."""

from __future__ import annotations

from pathlib import Path

import torch

from drivegpt.checkpoints import POLICY, read_artifact, save_artifact
from drivegpt.rl.policy import ACTION_DIM, Policy, PolicyConfig

CHECKPOINT_KIND = POLICY


def save_policy(policy: Policy, path: str | Path, meta: dict | None = None) -> Path:
    """Atomically write a policy checkpoint (kind, config, observation shape, weights, meta)."""
    return save_artifact(
        path, CHECKPOINT_KIND, policy.cfg.to_dict(), policy.state_dict(),
        obs_shape=list(policy.obs_shape),
        action_space={"dim": ACTION_DIM, "low": -1.0, "high": 1.0,
                      "meaning": ["desired curvature (normalized)", "desired accel (normalized)"]},
        bottleneck_bits=policy.bottleneck_bits, meta=dict(meta or {}))


def read_checkpoint(path: str | Path) -> dict:
    """Read and validate a policy checkpoint dict (file, or run directory holding policy.pt),
    loaded safely (drivegpt.checkpoints); other kinds and non-checkpoints raise naming the file."""
    art = read_artifact(path, CHECKPOINT_KIND)
    if "hyper_parameters" in art.blob:  # a Lightning checkpoint of the BC module
        cfg = PolicyConfig.from_dict(art.config)
        ckpt = {"kind": CHECKPOINT_KIND, "config": cfg.to_dict(), "obs_shape": list(cfg.obs_shape),
                "state_dict": art.state_dict, "meta": {"from_lightning": str(art.path)}}
    else:
        ckpt = dict(art.blob)
    if "obs_shape" not in ckpt:
        raise ValueError(f"{art.path}: policy checkpoint lacks key 'obs_shape'")
    ckpt["path"] = str(art.path)
    return ckpt


def load_policy(path: str | Path, obs_shape: tuple | list | None = None, map_location: str | torch.device = "cpu") -> Policy:
    """Load a policy (eval mode). ``obs_shape`` [K, H, W, 3]: fail clearly if the checkpoint differs."""
    ckpt = read_checkpoint(path)
    cfg = PolicyConfig.from_dict(ckpt["config"])
    if list(ckpt["obs_shape"]) != list(cfg.obs_shape):
        raise ValueError(f"{ckpt['path']}: key 'obs_shape' {ckpt['obs_shape']} disagrees with its config {list(cfg.obs_shape)}")
    if obs_shape is not None and list(obs_shape) != list(cfg.obs_shape):
        raise ValueError(
            f"{ckpt['path']}: policy observation shape {list(cfg.obs_shape)} [K,H,W,3] does not match the "
            f"requested {list(obs_shape)}")
    policy = Policy(cfg)
    try:
        policy.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{ckpt['path']}: key 'state_dict' does not fit the policy config ({e})") from None
    policy.checkpoint_meta = ckpt.get("meta", {})
    return policy.to(map_location).eval()


__all__ = ["CHECKPOINT_KIND", "save_policy", "read_checkpoint", "load_policy"]
