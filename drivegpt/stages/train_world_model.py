"""``drivegpt train world_model``: Lightning training over token-window shards.

Reads windows of ``data.context_frames`` frames at ``data.stride`` through
``drivegpt.data.datamodule.FleetDataModule(kind="windows", key="tokens")``; writes
``run_dir/checkpoints`` (resumable: ``trainer.ckpt_path=last``), ``run_dir/world_model.pt``
(config + tokenizer path + weights, for ``load_world_model``), ``run_dir/samples/*.png``
(decoded real | predicted, when the tokenizer is loadable) and ``metrics.json``.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from drivegpt.data.datamodule import FleetDataModule
from drivegpt.data.shard_reading import expand_urls, iter_samples
from drivegpt.runs import mark_done, write_metrics
from drivegpt.stages.common import bind_fps, run_dir_of
from drivegpt.training import StepBudget, collective_errors, collective_timeout, make_trainer, resume_path
from drivegpt.world_model.callbacks import SampleRollouts
from drivegpt.world_model.checkpoint import load_world_model, save_world_model
from drivegpt.world_model.hazard import hazard_inputs, refit_hazard_head
from drivegpt.world_model.module import WorldModelModule

MODEL_KEYS = ("n_layer", "n_head", "n_embd", "dropout", "bias", "cond_drop", "horizons", "pose_head", "dis_cond",
              "dis_history", "dis_start", "prev_frame", "prev_warp", "prev_flow", "decoding", "mask_steps",
              "context_noise")
OPTIM_KEYS = ("lr", "min_lr_ratio", "weight_decay", "betas", "warmup_steps", "dis_weight", "pose_weight")


def token_meta(shards: str, skip_bad: bool = False) -> dict:
    """{vocab_size, grid, tokenizer_path} from the first (readable, with ``skip_bad``) token sample's meta["tokens"]."""
    urls = expand_urls(shards)
    for sample in iter_samples(urls, skip_bad=skip_bad):
        meta = sample.meta if hasattr(sample, "meta") else sample.get("meta", {})
        tm = meta.get("tokens")
        if not isinstance(tm, dict) or "vocab_size" not in tm or "grid" not in tm:
            sid = meta.get("segment_id", "?")
            raise ValueError(f"{shards}: sample {sid!r} has no meta['tokens'] with vocab_size and grid "
                             "(is this a token shard written by `drivegpt tokenize`?)")
        path = tm.get("tokenizer_path") or tm.get("tokenizer") or tm.get("path")
        return {"vocab_size": int(tm["vocab_size"]), "grid": [int(g) for g in tm["grid"]], "tokenizer_path": path}
    raise ValueError(f"{shards}: no samples")


def model_config(cfg: DictConfig, vocab_size: int, grid) -> dict:
    wm = cfg.world_model
    d = {k: OmegaConf.to_object(wm[k]) if OmegaConf.is_config(wm[k]) else wm[k] for k in MODEL_KEYS if k in wm}
    if cfg.data.get("fps") is None:
        raise ValueError("data.fps is null (it follows the shards' meta.fps): bind it first with "
                         "drivegpt.stages.common.bind_fps(cfg), as the stage does, or set data.fps")
    d.update(vocab_size=int(vocab_size), grid=[int(g) for g in grid], max_frames=int(cfg.data.context_frames),
             fps=float(cfg.data.fps) / float(cfg.data.stride))
    return d


def max_steps(cfg: DictConfig) -> int:
    """world_model.max_steps (a per-stage budget in the experiment presets) or trainer.max_steps."""
    return int(cfg.world_model.get("max_steps") or cfg.trainer.max_steps)


def build_module(cfg: DictConfig, vocab_size: int, grid, tokenizer_path: str | None) -> WorldModelModule:
    wm = cfg.world_model
    optim = {k: (list(wm[k]) if k == "betas" else wm[k]) for k in OPTIM_KEYS if k in wm}
    module = WorldModelModule(model_config(cfg, vocab_size, grid), tokenizer_path=tokenizer_path,
                              max_steps=max_steps(cfg), **optim)
    if cfg.get("checkpoint"):
        module.model.load_state_dict(load_world_model(cfg.checkpoint).state_dict())
    return module


def hazard_refit(cfg: DictConfig, model) -> dict:
    """``world_model.hazard_refit``: refit the disengagement head on the training split's windows
    (``drivegpt.world_model.hazard``), each frame once (windows that do not overlap). Under DDP it
    runs on rank zero and reads the shards that rank reads."""
    t0 = time.time()
    rc = cfg.world_model.hazard_refit
    rcfg = cfg.copy()
    rcfg.data.window_step = int(cfg.data.stride) * int(cfg.data.context_frames)
    rcfg.data.windows_per_segment = None
    loader = FleetDataModule(rcfg, kind="windows", key="tokens").dataloader("train", shuffle=False, resampled=False)
    nb = rc.get("max_batches")
    data = hazard_inputs(model, loader, int(nb) if nb is not None else None)
    if data is None:
        return {"replaced": False, "reason": "the training windows carry no disengagement targets"}
    report = refit_hazard_head(model, data, steps=int(rc.steps), lr=float(rc.lr),
                               weight_decays=tuple(float(w) for w in rc.weight_decays),
                               aside_fraction=float(rc.aside_fraction), seed=int(cfg.seed),
                               keep_joint=bool(rc.get("keep_joint", False)))
    report["seconds"] = round(time.time() - t0, 1)
    return report


def run(cfg: DictConfig) -> dict:
    run_dir = run_dir_of(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    bind_fps(cfg)  # the model's frame rate comes from the shards' meta.fps
    meta = token_meta(str(cfg.data.shards), skip_bad=bool(cfg.data.get("skip_bad", False)))
    tok_path = cfg.get("tokenizer_path") or meta["tokenizer_path"]
    module = build_module(cfg, meta["vocab_size"], meta["grid"], tok_path)
    dm = FleetDataModule(cfg, kind="windows", key="tokens")
    callbacks = [SampleRollouts(run_dir / "samples", tok_path, int(cfg.world_model.get("sample_rollouts", 2)))]
    budget = StepBudget(float(cfg.world_model.train_seconds)) if cfg.world_model.get("train_seconds") else None
    trainer = make_trainer(cfg, run_dir, "world_model", callbacks=callbacks + ([budget] if budget else []),
                           max_steps=max_steps(cfg))
    t0 = time.time()
    with collective_errors("train_world_model", trainer, collective_timeout(cfg.trainer).total_seconds()):
        trainer.fit(module, datamodule=dm, ckpt_path=resume_path(cfg, run_dir))
    train_s = time.time() - t0
    model = module.model.float().cpu().eval()
    refit = None
    if trainer.is_global_zero and cfg.world_model.get("hazard_refit") and cfg.world_model.hazard_refit.get("enabled"):
        refit = hazard_refit(cfg, model)
    out = run_dir / "world_model.pt"
    if trainer.is_global_zero:  # every rank holds the same weights; one writes them
        out = save_world_model(model, out)
    cm = trainer.callback_metrics
    metrics = {
        "world_model_path": str(out),
        "tokenizer_path": tok_path,
        "params": model.num_params(),
        "train_seconds": train_s,
        "budget": budget.report if budget else None,
        "global_step": trainer.global_step,
        "tokens_per_step": int(cfg.data.batch_size) * model.cfg.block_size * int(cfg.trainer.accumulate_grad_batches),
    }
    if refit is not None:
        metrics["hazard_refit"] = refit
    for k, v in cm.items():
        if k.startswith(("train/", "val/")) and torch.is_tensor(v) and v.numel() == 1:
            metrics[k.replace("/", "_")] = float(v)
    if trainer.is_global_zero:
        write_metrics(run_dir, metrics)
        mark_done(run_dir, {"world_model": str(out)})
    return metrics
