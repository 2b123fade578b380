"""Lightning Trainer and logger construction shared by every training stage.

One config group (``trainer``) decides CPU/GPU/DDP/FSDP/SLURM; stages never build a
Trainer by hand. Checkpoints go to ``run_dir/checkpoints`` (``last.ckpt`` always kept), and
``trainer.ckpt_path=last`` resumes from there.

Several ranks: the DDP/FSDP strategies get ``trainer.collective_timeout_s`` (a collective that
one rank never joins fails after that long instead of hanging), and ``collective_errors(stage,
trainer)`` turns such a failure into a ``CollectiveError`` naming the stage and the rank. An
integer ``trainer.limit_val_batches`` counts the batches of the whole run (it is divided over
the ranks), so the validated held-out samples do not depend on the number of ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from drivegpt.checkpoints import state_sha256, to_cpu
from drivegpt.runs import atomic_write_json
from drivegpt.tracking import wandb_mode


def cpu_has_native_bf16() -> bool:
    """True where this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there bf16-mixed
    training steps are ~1.4-1.5x faster than fp32 (README "Tokenizer"); elsewhere bf16 is
    emulated and slower."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(cfg_trainer: DictConfig) -> str:
    """``precision: null`` means bf16-mixed on a GPU and on a CPU with native bf16 matmuls
    (cpu_has_native_bf16), 32-true on other CPUs."""
    if cfg_trainer.get("precision"):
        return str(cfg_trainer.precision)
    import torch

    wants_gpu = cfg_trainer.accelerator in ("gpu", "cuda") or (
        cfg_trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    return "bf16-mixed" if wants_gpu or cpu_has_native_bf16() else "32-true"


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
    """Per-rank audit of a distributed run: which samples each rank trained on, hashes of its
    parameters at the start and the end and of its final state (parameters and buffers), how far
    training moved the parameters (``params_changed`` of ``params_total`` tensors,
    ``max_abs_change``) and the batch counts it ran, written to ``run_dir/audit/rank<r>.json``;
    the final state itself goes to ``run_dir/audit/final_rank<r>.pt``. Enabled by
    ``trainer.audit=true``; used to check that ranks read disjoint data, ran the same work,
    trained, and end identical."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.seen: list[str] = []
        self.initial: dict = {}
        self.batches = {"train": 0, "val": 0}

    def on_train_start(self, trainer, pl_module):
        self.initial = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches["train"] += 1
        if not isinstance(batch, dict) or batch.get("segment_id") is None:
            return
        ids, starts = batch["segment_id"], batch.get("start")
        starts = starts.tolist() if hasattr(starts, "tolist") else (starts or [None] * len(ids))
        self.seen += [f"{i}@{s}" for i, s in zip(ids, starts)]

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches["val"] += 1

    def on_train_end(self, trainer, pl_module):
        import torch

        r = trainer.global_rank
        (self.run_dir / "audit").mkdir(parents=True, exist_ok=True)
        torch.save(to_cpu(pl_module.state_dict()),
                   self.run_dir / "audit" / f"final_rank{r}.pt")
        atomic_write_json(self.run_dir / "audit" / f"rank{r}.json",
                          {"rank": r, "world_size": trainer.world_size, "seen": self.seen,
                           "batches": self.batches, "params_initial_sha256": state_sha256(self.initial.items()),
                           "params_sha256": state_sha256(pl_module.named_parameters()),
                           "weights_sha256": state_sha256(pl_module.state_dict().items()), **self._moved(pl_module)})

    def _moved(self, pl_module) -> dict:
        change = [float((p.detach().cpu() - self.initial[n]).abs().max()) for n, p in pl_module.named_parameters()
                  if n in self.initial and p.numel()]
        return {"params_total": len(change), "params_changed": sum(c > 0 for c in change),
                "max_abs_change": max(change, default=0.0)}


class StepBudget(Callback):
    """A stage's length in wall-clock seconds as well as steps: the step count is fixed early
    from the measured step time (and revised once), so the learning-rate schedule (which reads
    ``pl_module.schedule_steps``) stays a deterministic function of the step and every rank
    agrees on it.

    The steps from ``start`` to ``start + measure`` are timed (the first ones pay for worker
    start-up and warm-up); at ``start + measure`` the run's total becomes
    ``min(max_steps, done + (seconds - elapsed) / step_time)``, broadcast from rank 0. A machine
    fast enough to finish ``max_steps`` within ``seconds`` trains exactly as without a budget;
    a slower one trains fewer steps with the schedule compressed to fit, the count revised once
    half-way on the pace measured since. ``report`` holds what
    was measured and decided (saved in checkpoints, so a resumed run keeps the decision)."""

    def __init__(self, seconds: float, start: int = 5, measure: int = 20):
        if not seconds or seconds <= 0:
            raise ValueError(f"StepBudget: seconds={seconds!r}, expected > 0")
        self.seconds, self.start, self.measure = float(seconds), int(start), int(measure)
        self.report: dict = {}
        self._t0 = self._t_start = None

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter() - float(self.report.get("elapsed_before", 0.0))
        if self.report.get("steps") is not None:  # resumed after the decision
            self._apply(trainer, pl_module, int(self.report["steps"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step, now = int(trainer.global_step), time.perf_counter()
        r = self.report
        if r.get("steps") is not None:
            r["elapsed_before"] = now - self._t0
            # once more half-way, on the pace since the first decision (periodic callbacks, such as
            # image grids, and logging are in it now): the first estimate ran ~12% short on the demo's
            # tokenizer. The cosine's horizon moves once, by a few percent.
            if not r.get("revised") and r["bound"] == "time" and step >= (r["decided_at"] + r["steps"]) // 2 \
                    and self._t_start is not None and step > r["decided_at"]:
                pace = (now - r["decided_time"] - self._t0) / (step - r["decided_at"])
                total = max(step + 1, min(r["max_steps"], step + int((self.seconds - (now - self._t0)) / pace)))
                total = int(trainer.strategy.broadcast(total, src=0))
                r.update(revised=True, revised_at=step, first_steps=r["steps"], steps=total,
                         step_seconds_late=round(pace, 4), bound="time" if total < r["max_steps"] else "steps")
                self._apply(trainer, pl_module, total)
            return
        if step == self.start:
            self._t_start = now
        elif step == self.start + self.measure and self._t_start is not None:
            step_s = (now - self._t_start) / self.measure
            left = self.seconds - (now - self._t0)
            cap = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else 10 ** 9
            total = max(step + 1, min(cap, step + int(left / step_s)))
            total = int(trainer.strategy.broadcast(total, src=0))
            self.report = {"seconds": self.seconds, "step_seconds": round(step_s, 4), "max_steps": cap,
                           "steps": total, "bound": "time" if total < cap else "steps",
                           "decided_at": step, "decided_time": now - self._t0, "elapsed_before": now - self._t0}
            self._apply(trainer, pl_module, total)

    @staticmethod
    def _apply(trainer, pl_module, total: int):
        trainer.fit_loop.epoch_loop.max_steps = total  # what the loop checks every step
        pl_module.schedule_steps = total

    def state_dict(self):
        return {"report": dict(self.report)}

    def load_state_dict(self, state_dict):
        self.report = dict(state_dict.get("report") or {})


DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
_SPAWN = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def collective_timeout(cfg_trainer) -> datetime.timedelta:
    s = cfg_trainer.get("collective_timeout_s")
    s = DEFAULT_COLLECTIVE_TIMEOUT_S if s is None else float(s)
    if s <= 0:
        raise ValueError(f"trainer.collective_timeout_s must be > 0 seconds, got {s}")
    return datetime.timedelta(seconds=s)


def _several(value) -> bool:
    """``trainer.devices``/``num_nodes`` that mean more than one process."""
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return len(value) > 1
    try:
        return int(value) > 1 or int(value) == -1
    except (TypeError, ValueError):
        return False  # "auto": let Lightning decide (no timeout of ours)


def make_strategy(cfg_trainer):
    """``trainer.strategy`` as Lightning's strategy object with the collective timeout (ddp,
    ddp_spawn, ddp_fork, fsdp; "auto" on several devices or nodes means DDP); other values pass
    through unchanged."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    name = cfg_trainer.get("strategy") or "auto"
    if not isinstance(name, str):
        return name
    timeout = collective_timeout(cfg_trainer)
    if name == "auto" and (_several(cfg_trainer.get("devices")) or _several(cfg_trainer.get("num_nodes", 1))):
        name = "ddp"
    if name in _SPAWN:
        return DDPStrategy(start_method=_SPAWN[name], timeout=timeout)
    if name == "fsdp":
        return FSDPStrategy(timeout=timeout)
    return name


class CollectiveError(RuntimeError):
    """A collective (all-reduce, broadcast, barrier) that not every rank joined in time, or that
    failed because another rank died or called a different collective."""


@contextlib.contextmanager
def collective_errors(stage: str, trainer=None, timeout_s: float | None = None):
    """Re-raise a distributed failure inside the block as ``CollectiveError`` naming the stage,
    this rank and (for a timeout) the limit; the backend's own message is kept as the cause."""
    import torch.distributed as dist

    try:
        yield
    except Exception as e:  # noqa: BLE001 - filtered below, everything else re-raised as is
        text = f"{type(e).__name__}: {e}"
        is_dist = isinstance(e, getattr(dist, "DistError", ())) or any(
            k in text for k in ("Timed out", "timed out", "Timeout", "Connection closed by peer",
                                "Connection reset by peer", "gloo", "NCCL"))
        if not is_dist or isinstance(e, CollectiveError):
            raise
        rank, world = 0, 1
        if trainer is not None:
            rank, world = int(trainer.global_rank), int(trainer.world_size)
        elif dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        if any(k in text for k in ("Timed out", "timed out", "Timeout")):
            what = "a collective was not joined by every rank within " + (
                f"trainer.collective_timeout_s={timeout_s:g} s" if timeout_s else "the collective timeout")
        else:
            what = "a collective failed: another rank died or called a different collective"
        raise CollectiveError(
            f"{stage}: rank {rank} of {world}: {what} (the ranks ran different numbers of steps or "
            f"batches, or a rank stalled or crashed; see the other ranks' logs): {text.splitlines()[0][:500]}") from e


def _is_sigterm_stop(trainer, exception) -> bool:
    """Lightning's ``SIGTERMException``, or a DataLoader worker killed by the same SIGTERM: a
    scheduler's stop (or ``kill -- -PGID``) signals the whole process group, and a worker that
    died first fails the next batch ("DataLoader worker ... is killed by signal: Terminated")
    before Lightning raises its own exception. Either way the last optimizer step is complete."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exception, SIGTERMException):
        return True
    received = bool(getattr(getattr(trainer, "_signal_connector", None), "received_sigterm", False))
    return received and isinstance(exception, RuntimeError) and "DataLoader worker" in str(exception)


class CheckpointOnSigterm(Callback):
    """On SIGTERM (a scheduler's stop, ``kill``) Lightning finishes the current batch and raises
    ``SIGTERMException``; this writes ``checkpoints/last.ckpt`` at that step first (atomically), so a
    re-run with ``trainer.ckpt_path=last`` (the pipeline's default) resumes from where it stopped,
    not from the last periodic checkpoint. ``drivegpt`` then exits with status 143. The same
    holds when the SIGTERM reached the DataLoader workers too and one died first
    (``_is_sigterm_stop``)."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "checkpoints" / "last.ckpt"

    def on_exception(self, trainer, pl_module, exception):
        if not _is_sigterm_stop(trainer, exception):
            return
        if threading.current_thread() is threading.main_thread():
            # the workers die of the same SIGTERM: PyTorch's SIGCHLD handler would raise in the save
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        tmp = self.path.with_name(f".{self.path.name}.sigterm.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            tmp.replace(self.path)
            print(f"SIGTERM: saved {self.path} at step {trainer.global_step}", file=sys.stderr, flush=True)
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):  # a dead worker's error: stop as SIGTERM stops
            raise SIGTERMException() from exception


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
        strategy=make_strategy(t),
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
    trainer = L.Trainer(**kwargs)
    limit = trainer.limit_val_batches
    if trainer.world_size > 1 and isinstance(limit, int) and limit > 0:
        trainer.limit_val_batches = math.ceil(limit / trainer.world_size)  # the run's total, over the ranks
    return trainer


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
