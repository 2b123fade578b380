"""``drivegpt tokenize``: encode frame shards into token shards with ``trainer.predict``.

    drivegpt tokenize checkpoint=runs/tok/tokenizer.pt data.shards=runs/fleet/shards out=runs/tokens
    drivegpt tokenize ... trainer=ddp          # every GPU of the node; trainer=slurm for nodes

The work (one input frame shard per predict step, resumable parts, the combined manifest) is
``drivegpt.tokenizer.tokenize``; read the token shards with ``data.shards=<out>/*/*.tar``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from drivegpt.data.shard_reading import expand_urls
from drivegpt.runs import mark_done, write_metrics
from drivegpt.stages.common import run_dir_of
from drivegpt.tokenizer.model import load_tokenizer
from drivegpt.tokenizer.tokenize import TokenizeModule, combine_manifests
from drivegpt.training import collective_errors, collective_timeout, make_trainer


def run(cfg: DictConfig) -> dict:
    run_dir = run_dir_of(cfg)
    out = Path(cfg.out)
    model = load_tokenizer(cfg.checkpoint)
    if model.vocab_size > np.iinfo(np.int16).max + 1:
        raise ValueError(f"{cfg.checkpoint}: vocab_size {model.vocab_size} does not fit int16 tokens")
    urls = expand_urls(cfg.data.shards)
    tokens_meta = {"vocab_size": model.vocab_size, "grid": list(model.grid), "frame_size": list(model.frame_size),
                   "tokenizer": str(Path(model.path).resolve()), "every": int(cfg.every)}
    module = TokenizeModule(model, str(out), int(cfg.batch_size), int(cfg.maxcount),
                            bool(cfg.data.get("resize", True)), tokens_meta, urls,
                            skip_bad=bool(cfg.data.get("skip_bad", False)),
                            num_workers=int(cfg.data.get("num_workers", 0)))
    # fp32 whatever trainer.precision trains in: the shards' tokens must be the ones
    # Tokenizer.encode gives the learned simulator at run time (bf16 moves lattice boundaries)
    trainer = make_trainer(cfg, run_dir, "tokenize", use_distributed_sampler=False, logger=False,
                           inference_mode=True, precision="32-true")
    t0 = time.time()
    with collective_errors("tokenize", trainer, collective_timeout(cfg.trainer).total_seconds()):
        trainer.predict(module, return_predictions=False)
        trainer.strategy.barrier()
    seconds = time.time() - t0
    metrics: dict = {}
    if trainer.is_global_zero:
        manifest = combine_manifests(out, urls)
        metrics = {"tokenize/segments": manifest["samples"], "tokenize/frames": manifest["frames"],
                   "tokenize/parts": len(manifest["parts"]), "tokenize/seconds": seconds,
                   "tokenize/frames_per_s": manifest["frames"] / max(seconds, 1e-9),
                   "tokenize/out": str(out), "tokenize/shards": manifest["pattern"],
                   "tokenize/complete": manifest["complete"], "tokenize/skipped_bad": manifest["skipped_bad"], **{f"tokenize/{k}": v for k, v in tokens_meta.items()}}
        if manifest["skipped_bad"]:
            print(f"tokenize: skipped {manifest['skipped_bad']} bad input sample(s) (data.skip_bad=true); "
                  f"see {out}/manifest.json 'parts[].errors'")
        write_metrics(run_dir, metrics)
        mark_done(run_dir, {"shards": manifest["pattern"]})
    return metrics
