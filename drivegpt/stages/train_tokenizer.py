"""``drivegpt train tokenizer``: fit the VQ tokenizer on frame shards.

    drivegpt train tokenizer experiment=tiny data.shards=runs/fleet/shards run_dir=runs/tok
    drivegpt train tokenizer ... trainer.ckpt_path=last      # resume

Writes run_dir/tokenizer.pt (what ``load_tokenizer`` and the later stages read),
run_dir/checkpoints/{last.ckpt,...}, recon_grid.png, codebook_usage.png and metrics.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from drivegpt.checkpoints import lightning_global_step
from drivegpt.data.datamodule import FleetDataModule
from drivegpt.runs import mark_done, write_metrics
from drivegpt.tokenizer.model import save_tokenizer
from drivegpt.tokenizer.module import TokenizerModule
from drivegpt.tokenizer.callbacks import ReconImages
from drivegpt.training import StepBudget, collective_errors, collective_timeout, make_trainer, resume_path


def fit(cfg: DictConfig, datamodule, **trainer_overrides) -> tuple[TokenizerModule, dict]:
    """Train on ``datamodule`` per ``cfg``; returns the module and metrics (rank 0 writes files)."""
    L.seed_everything(int(cfg.seed), workers=True)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if int(cfg.trainer.get("accumulate_grad_batches") or 1) != 1:
        raise ValueError("trainer.accumulate_grad_batches: the tokenizer optimizes manually; use a larger "
                         "data.batch_size instead of accumulation")
    module = TokenizerModule(cfg.tokenizer, clip_val=cfg.trainer.get("gradient_clip_val"))
    every = int(cfg.tokenizer.get("image_every_n_steps", 200))
    trainer_overrides = {"gradient_clip_val": None, "accumulate_grad_batches": 1, **trainer_overrides}
    if cfg.tokenizer.get("train_steps"):  # this stage's own length (trainer.max_steps is shared)
        trainer_overrides.setdefault("max_steps", int(cfg.tokenizer.train_steps))
    callbacks = [ReconImages(run_dir, every)]
    budget = StepBudget(float(cfg.tokenizer.train_seconds)) if cfg.tokenizer.get("train_seconds") else None
    trainer = make_trainer(cfg, run_dir, "tokenizer", callbacks=callbacks + ([budget] if budget else []),
                           **trainer_overrides)
    t0 = time.time()
    resume = resume_path(cfg, run_dir)
    resumed_from = lightning_global_step(resume) if resume else 0  # before fit overwrites last.ckpt
    with collective_errors("train_tokenizer", trainer, collective_timeout(cfg.trainer).total_seconds()):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    seconds = time.time() - t0
    m = trainer.callback_metrics
    steps = int(trainer.global_step)
    last = run_dir / "checkpoints" / "last.ckpt"
    if steps == 0 and last.exists():  # ddp_spawn: the launching process's trainer never stepped
        steps = lightning_global_step(last)
    counts = module.usage_counts.cpu().numpy()
    metrics = {
        "tokenizer/steps": steps,
        "tokenizer/batch_size": int(cfg.data.batch_size),
        "tokenizer/resumed_from_step": resumed_from,
        "tokenizer/train_seconds": seconds,
        "tokenizer/budget": budget.report if budget else None,
        "tokenizer/train_psnr": float(m["train/psnr"]) if "train/psnr" in m else None,
        "tokenizer/val_psnr": float(m["val/psnr"]) if "val/psnr" in m else None,
        "tokenizer/train_usage": float((counts > 0).mean()) if counts.sum() else None,
        "tokenizer/params": int(sum(p.numel() for p in module.model.parameters())),
        "tokenizer/vocab_size": module.model.vocab_size,
        "tokenizer/grid": list(module.model.grid),
        "tokenizer/device": str(module.device.type),
        "tokenizer/precision": str(trainer.precision),
    }
    if trainer.is_global_zero:
        path = save_tokenizer(module.model, run_dir / "tokenizer.pt",
                              extra={"global_step": steps})
        metrics["tokenizer/checkpoint"] = str(path.resolve())
        write_metrics(run_dir, metrics)
        mark_done(run_dir, {"checkpoint": str(path.resolve())})
    return module, metrics


def run(cfg: DictConfig) -> dict:
    if cfg.tokenizer.get("batch_size"):  # this stage's own batch (data.batch_size is shared)
        cfg = cfg.copy()
        cfg.data.batch_size = int(cfg.tokenizer.batch_size)
    _, metrics = fit(cfg, FleetDataModule(cfg, kind="frames"))
    return metrics
