"""Lightning Trainer and logger construction shared by every training stage.

One config group (``trainer``) decides CPU/GPU/DDP/FSDP/SLURM; stages never build a
Trainer by hand. Checkpoints go to ``run_dir/checkpoints`` (``last.ckpt`` always kept), and
``trainer.ckpt_path=last`` resumes from there.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from drivegpt.runs import atomic_write_json
from drivegpt.tracking import wandb_mode


def resolve_precision(cfg_trainer: DictConfig) -> str:
    """``precision: null`` means bf16-mixed on a GPU and 32-true on CPU."""
    if cfg_trainer.get("precision"):
        return str(cfg_trainer.precision)
    import torch

    wants_gpu = cfg_trainer.accelerator in ("gpu", "cuda") or (
        cfg_trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    return "bf16-mixed" if wants_gpu else "32-true"


def make_logger(cfg: DictConfig, run_dir: str | Path, name: str):
    """Lightning loggers for a stage: always a CSV copy in run_dir, plus wandb unless disabled."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    run_dir = Path(run_dir)
    # One version_N directory per (re)start: a resumed run keeps the curves of the runs before.
    loggers = [CSVLogger(save_dir=str(run_dir), name="logs")]
    mode = wandb_mode(cfg.logger) if cfg.logger.kind == "wandb" else "disabled"
    if mode != "disabled":
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.get("entity"),
                name=f"{name}-{run_dir.name}",
                save_dir=str(run_dir),
                mode=mode,
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


class DataAuditCallback(Callback):
    """Per-rank audit of a distributed run: which samples each rank trained on, and a hash of
    its final weights, written to ``run_dir/audit/rank<r>.json``, with how far training moved
    the parameters from where they started (``params_changed`` of ``params_total`` tensors,
    ``max_abs_change``). Enabled by ``trainer.audit=true``; used to check that ranks read
    disjoint data, trained, and end identical."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.seen: list[str] = []
        self.initial: dict = {}

    def on_train_start(self, trainer, pl_module):
        self.initial = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not isinstance(batch, dict) or batch.get("segment_id") is None:
            return
        ids, starts = batch["segment_id"], batch.get("start")
        starts = starts.tolist() if hasattr(starts, "tolist") else (starts or [None] * len(ids))
        self.seen += [f"{i}@{s}" for i, s in zip(ids, starts)]

    def on_train_end(self, trainer, pl_module):
        h = hashlib.sha256()
        for name, p in sorted(pl_module.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        atomic_write_json(self.run_dir / "audit" / f"rank{trainer.global_rank}.json",
                          {"rank": trainer.global_rank, "world_size": trainer.world_size,
                           "seen": self.seen, "weights_sha256": h.hexdigest(), **self._moved(pl_module)})

    def _moved(self, pl_module) -> dict:
        change = [float((p.detach().cpu() - self.initial[n]).abs().max()) for n, p in pl_module.named_parameters()
                  if n in self.initial and p.numel()]
        return {"params_total": len(change), "params_changed": sum(c > 0 for c in change),
                "max_abs_change": max(change, default=0.0)}


class CheckpointOnSigterm(Callback):
    """On SIGTERM (a scheduler's stop, ``kill``) Lightning finishes the current batch and raises
    ``SIGTERMException``; this writes ``checkpoints/last.ckpt`` at that step first (atomically), so a
    re-run with ``trainer.ckpt_path=last`` (the pipeline's default) resumes from where it stopped,
    not from the last periodic checkpoint. ``drivegpt`` then exits with status 143."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "checkpoints" / "last.ckpt"

    def on_exception(self, trainer, pl_module, exception):
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            return
        tmp = self.path.with_name(f".{self.path.name}.sigterm.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            tmp.replace(self.path)
            print(f"SIGTERM: saved {self.path} at step {trainer.global_step}", file=sys.stderr, flush=True)


def make_trainer(cfg: DictConfig, run_dir: str | Path, name: str, callbacks=(), **overrides):
    """Build the Trainer for a stage from ``cfg.trainer`` (+ keyword overrides for tests)."""
    t = cfg.trainer
    run_dir = Path(run_dir)
    ckpt = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        save_last=True,
        save_top_k=0 if not t.get("checkpoint_every_n_steps") else 1,
        every_n_train_steps=t.get("checkpoint_every_n_steps") or None,
    )
    kwargs = dict(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t),
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval,
        limit_val_batches=t.limit_val_batches,
        enable_progress_bar=t.enable_progress_bar,
        default_root_dir=str(run_dir),
        logger=make_logger(cfg, run_dir, name),
        callbacks=[ckpt, CheckpointOnSigterm(run_dir), *callbacks]
        + ([DataAuditCallback(run_dir)] if t.get("audit") else []),
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def resume_path(cfg: DictConfig, run_dir: str | Path) -> str | None:
    """``trainer.ckpt_path``: null -> None, 'last' -> run_dir/checkpoints/last.ckpt if present."""
    p = cfg.trainer.get("ckpt_path")
    if not p:
        return None
    if p == "last":
        last = Path(run_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(p).exists():
        raise FileNotFoundError(f"trainer.ckpt_path={p}: no such checkpoint")
    return str(p)
