"""Tokenizer quality on held-out road-world frames, one JSON line.

    python benchmarks/tokenizer_quality.py                                 # tiny default run only
    python benchmarks/tokenizer_quality.py --checkpoint runs/tok/tokenizer.pt   # + that checkpoint
    python benchmarks/tokenizer_quality.py --dev --skip-tiny --checkpoint A.pt --checkpoint B.pt
        # design choices: dev seeds (3,000,000..), never in a fleet or an evaluation

Targets (issue 3) at 128x256 frames, 8x16 tokens, 1024 codes: PSNR >= 30 dB, lane-marking
PSNR >= 24 dB, codebook usage >= 90%. A checkpoint is scored on road-world segments that no
fleet trained on: seeds from HELD_OUT_FIRST_SEED (1,000,000, the closed-loop evaluation's
first held-out seed; fleets use 0..) whose fleet segment ids (``proc_NNNNNN``) also fall in the
held-out split of data.loaders.split_of at the default val_fraction. The tiny default
run trains a tiny tokenizer (experiment=tiny sizes, --steps, CPU) on train-split road-world
frames and scores it the same way, next to a baseline (every frame decoded as the mean
training frame), so the figures say what the hardware at hand reaches in that time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from drivegpt.data.loaders import split_of
from drivegpt.sim.roadworld import drive_segment
from drivegpt.sim.roadworld.fleet import segment_id
from drivegpt.config import compose
from drivegpt.tokenizer import Tokenizer, load_tokenizer
from drivegpt.tokenizer.evaluate import Scorer
from drivegpt.tokenizer.losses import ReconstructionLoss
from drivegpt.tokenizer.model import to_float

TARGETS = {"psnr": 30.0, "lane_psnr": 24.0, "codebook_usage": 90.0}
HELD_OUT_FIRST_SEED = 1_000_000  # beyond any fleet's seeds (fleets use 0..segments-1)
DEV_FIRST_SEED = 3_000_000  # design choices are made here, never on the evaluation's seeds
VAL_FRACTION = 0.1  # data.val_fraction's default


def held_out_seeds(n: int, first_seed: int = HELD_OUT_FIRST_SEED, val_fraction: float = VAL_FRACTION) -> list[int]:
    """The first ``n`` seeds >= first_seed whose fleet segment id is in the held-out split."""
    out, seed = [], first_seed
    while len(out) < n:
        if split_of(segment_id(seed), val_fraction) == "val":
            out.append(seed)
        seed += 1
    return out


def road_world(split: str, n_segments: int, seconds: float, h: int, w: int, every: int = 1):
    """(frames uint8 [N,h,w,3], lane_mask bool [N,h,w]) of road-world segments, every ``every``-th
    frame: ``train`` from seed 0 on (train-split ids), ``val`` from held_out_seeds (never in a
    fleet), ``dev`` the consecutive seeds from DEV_FIRST_SEED (for choosing designs)."""
    frames, masks = [], []
    if split == "dev":
        seeds = list(range(DEV_FIRST_SEED, DEV_FIRST_SEED + n_segments))
    elif split == "val":
        seeds = held_out_seeds(n_segments)
    else:
        seeds = [s for s in range(10 * n_segments + 10) if split_of(segment_id(s), VAL_FRACTION) == "train"]
    for seed in seeds[:n_segments]:
        seg = drive_segment(seed, seconds, None, h, w)
        frames.append(seg.frames[::every])
        masks.append(seg.extras["lane_mask"][::every])
    return np.concatenate(frames), np.concatenate(masks)


def score(model: Tokenizer, frames: np.ndarray, masks: np.ndarray, batch: int = 32) -> dict:
    s = Scorer(model.vocab_size)
    for i in range(0, len(frames), batch):
        fr = torch.from_numpy(frames[i:i + batch])
        tokens, recon = model.reconstruct(fr)
        s.add(fr, recon, tokens, torch.from_numpy(masks[i:i + batch]))
    return s.metrics()


def tiny_run(steps: int, segments: int, seconds: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg = compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x"]).tokenizer
    h, w = int(cfg.frame_height), int(cfg.frame_width)
    tr, _ = road_world("train", segments, seconds, h, w)
    va, va_mask = road_world("val", max(1, segments // 2), seconds, h, w)
    model = Tokenizer(cfg)
    loss_fn = ReconstructionLoss(cfg.loss.l1, cfg.loss.mse, cfg.loss.ssim, cfg.loss.gradient, cfg.loss.get("edge", 0.0))
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg.optim.lr), betas=tuple(cfg.optim.betas))
    rng = np.random.default_rng(seed)
    bs = 16
    t0 = time.time()
    for _ in range(steps):
        x = to_float(torch.from_numpy(tr[rng.integers(0, len(tr), bs)]))
        recon, _, q_loss = model.train()(x)
        loss = loss_fn(recon, x)["rec"] + q_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds_trained = time.time() - t0
    model.eval()
    m = score(model, va, va_mask)
    # baseline: every held-out frame reconstructed as the mean training frame
    mean = np.broadcast_to(tr.mean(0).round().astype(np.uint8), va.shape)
    b = Scorer(1)
    b.add(torch.from_numpy(va), torch.from_numpy(np.ascontiguousarray(mean)), torch.zeros(len(va), 1, 1, dtype=torch.long),
          torch.from_numpy(va_mask))
    base = b.metrics()
    return {**m, "steps": steps, "batch": bs, "train_frames": len(tr), "train_seconds": seconds_trained,
            "frame_size": [h, w], "grid": list(model.grid),
            "baseline_mean_frame": {"psnr": base["psnr"], "lane_psnr": base["lane_psnr"]},
            "psnr_gain_over_baseline_db": m["psnr"] - base["psnr"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", action="append", default=[], help="score this checkpoint (repeatable)")
    ap.add_argument("--dev", action="store_true", help="score checkpoints on the dev seeds (10 x 30 s, every 4th "
                    "frame) instead of the held-out ones: for choosing between designs")
    ap.add_argument("--skip-tiny", action="store_true", help="no tiny default run")
    ap.add_argument("--steps", type=int, default=300, help="tiny default run: training steps")
    ap.add_argument("--segments", type=int, default=6, help="tiny default run: training segments")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per road-world segment")
    ap.add_argument("--eval-segments", type=int, default=4, help="held-out segments to score a checkpoint on")
    a = ap.parse_args(argv)
    out = {"bench": "tokenizer_quality", "targets": TARGETS, "host": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    frames = {}
    for path in a.checkpoint:
        model = load_tokenizer(path, map_location="cuda" if torch.cuda.is_available() else "cpu")
        size = tuple(model.frame_size)
        if size not in frames:
            frames[size] = (road_world("dev", 10, 30.0, *size, every=4) if a.dev
                            else road_world("val", a.eval_segments, a.seconds * 5, *size))
        m = score(model, *frames[size])
        m["meets_targets"] = {k: (m[k] is not None and m[k] >= v) for k, v in TARGETS.items()}
        out.setdefault("checkpoints", []).append({"path": path, "seeds": "dev" if a.dev else "held-out",
                                                  "frame_size": list(size), "grid": list(model.grid), **m})
    if len(a.checkpoint) == 1:
        out["checkpoint"] = out["checkpoints"][0]
    if not a.skip_tiny:
        out["tiny_default_run"] = tiny_run(a.steps, a.segments, a.seconds)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
