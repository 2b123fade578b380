"""wandb logging for stages that run no Lightning Trainer (fleet, evals, RL, export).

Mode as for the Trainer's WandbLogger (drivegpt.training.wandb_mode): offline by default,
online when logged in or WANDB_MODE says so, disabled in tests. metrics.json in the run
directory stays the local copy of everything logged here.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from drivegpt.training import wandb_mode


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

    from drivegpt.report import _flatten

    payload = {k: v for k, v in _flatten(metrics).items() if isinstance(v, (int, float))}
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
