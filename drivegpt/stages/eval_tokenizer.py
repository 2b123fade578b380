"""``drivegpt eval tokenizer``: reconstruction quality and codebook use on held-out frames.

    drivegpt eval tokenizer checkpoint=runs/tok data.shards=runs/fleet/shards run_dir=runs/tok_eval

Frames come from the held-out segments (``drivegpt.data.loaders.split_of``,
``data.val_fraction``); the scoring is ``drivegpt.tokenizer.evaluate``. Metrics (metrics.json,
prefix ``tokenizer_eval/``) and pictures (eval_recon.png, eval_usage.png) are written here.
"""

from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig

from drivegpt.data.loaders import frame_dataset
from drivegpt.runs import mark_done, write_metrics
from drivegpt.stages.common import run_dir_of
from drivegpt.tokenizer.evaluate import batches, score
from drivegpt.tokenizer.images import recon_grid, save_png, upscale_for, usage_plot
from drivegpt.tokenizer.model import load_tokenizer

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    run_dir = run_dir_of(cfg)
    device = cfg.get("device", "auto")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = load_tokenizer(cfg.checkpoint, map_location=device)
    d = cfg.data

    def dataset(split):
        return frame_dataset(d.shards, split=split, val_fraction=float(d.val_fraction), shuffle_buffer=0,
                             size=model.frame_size, skip_bad=bool(d.get("skip_bad", False)))

    t0 = time.time()
    split = "val"
    metrics, scorer, sample = score(model, batches(dataset("val"), int(cfg.batch_size)), int(cfg.max_frames))
    if scorer.n == 0:
        log.warning("no held-out segments (data.val_fraction=%s): scoring ALL frames, training ones included",
                    d.val_fraction)
        split = "all (no held-out segment in these shards)"
        metrics, scorer, sample = score(model, batches(dataset("all"), int(cfg.batch_size)), int(cfg.max_frames))
    if scorer.n == 0:
        raise ValueError(f"data.shards={d.shards}: no frames to evaluate")
    metrics.update(split=split, seconds=time.time() - t0, checkpoint=model.path, device=device,
                   grid=list(model.grid), frame_size=list(model.frame_size))
    save_png(run_dir / "eval_recon.png", recon_grid(*sample), scale=upscale_for(model.frame_size[0]))
    usage_plot(scorer.counts, run_dir / "eval_usage.png", "eval codebook usage")
    out = {f"tokenizer_eval/{k}": v for k, v in metrics.items()}
    write_metrics(run_dir, out)
    mark_done(run_dir, {"checkpoint": model.path})
    return out
