"""wandb logging for stages that run no Lightning Trainer (fleet, evals, RL, export).

One mode rule (wandb_mode) for these and the Trainer's WandbLogger: offline by default,
online when logged in or WANDB_MODE says so, disabled in tests. metrics.json in the run
directory stays the local copy of everything logged here.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from drivegpt.runs import flatten_metrics


def wandb_mode(cfg_logger: DictConfig) -> str:
    """$WANDB_MODE wins; else online when logged in (API key or netrc), else offline."""
    if cfg_logger.get("mode"):
        return str(cfg_logger.mode)
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def start(cfg: DictConfig, run_dir: str | Path, name: str):
    """A wandb run for a stage, or None when logging is disabled."""
    mode = wandb_mode(cfg.logger) if cfg.logger.get("kind") == "wandb" else "disabled"
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.get("entity"),
        name=f"{name}-{Path(run_dir).name}",
        dir=str(run_dir),
        mode=mode,
        config=OmegaConf.to_container(cfg, resolve=True),
        reinit="finish_previous",
    )


def log_stage(cfg: DictConfig, run_dir: str | Path, name: str, metrics: dict,
              images: dict[str, str | Path] | None = None,
              videos: dict[str, str | Path] | None = None,
              tables: dict[str, list[dict]] | None = None) -> None:
    """Log a finished stage's scalar metrics, pictures, videos and tables, then close the run."""
    run = start(cfg, run_dir, name)
    if run is None:
        return
    import wandb

    payload = {k: v for k, v in flatten_metrics(metrics).items() if isinstance(v, (int, float))}
    for k, p in (images or {}).items():
        payload[k] = wandb.Image(str(p))
    for k, p in (videos or {}).items():
        payload[k] = wandb.Video(str(p), format=Path(p).suffix.lstrip("."))
    for k, rows in (tables or {}).items():
        if rows:
            cols = list(rows[0])
            payload[k] = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
    run.log(payload)
    run.finish()
