"""Imagination speed: parallel (MaskGIT) frame decoding against one-token-per-pass decoding.

    python benchmarks/parallel_decoding.py [--size demo|proof|tiny] [--batches 16,64,256] [--steps 4,8]

Two world models of the preset's size (random weights: the time does not depend on them), one
``decoding="ar"`` (a cached pass per token, 128 per 8x16 frame) and one ``decoding="maskgit"``
(a context pass, then ``--steps`` passes of the whole frame), generate a frame from the same
context (``sampling.step``, temperature 1, the learned sim's call) at each batch size, with
guidance scale 1 and 3: autoregressive guidance doubles the whole batch (every move dropped),
parallel guidance only the frame's passes (the commanded move dropped; the context pass is
shared). The sides run in alternating rounds so load on a shared machine falls on all alike;
medians of wall seconds. Prints one JSON line: per batch, env steps/s of each side and the
parallel/autoregressive speed-ups at the same guidance scale, plus the FLOPs of one env step
of each (torch's FlopCounterMode, batch 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivegpt.world_model import WorldModel, WorldModelConfig  # noqa: E402
from drivegpt.world_model.sampling import step  # noqa: E402

SIZES = {  # (n_layer, n_head, n_embd, grid, vocab, context frames): configs/experiment/*.yaml
    "tiny": (1, 2, 16, (2, 4), 32, 2),  # the test's
    "demo": (2, 4, 128, (8, 16), 256, 3),
    "proof": (4, 4, 128, (8, 16), 1024, 5),
}


def build(size: str, decoding: str, mask_steps: int = 4) -> WorldModel:
    nl, nh, d, grid, vocab, ctx = SIZES[size]
    torch.manual_seed(0)
    cfg = WorldModelConfig(vocab_size=vocab, grid=grid, max_frames=ctx + 1, n_layer=nl, n_head=nh, n_embd=d,
                           prev_frame=3, prev_warp=True, dis_cond=True, decoding=decoding, mask_steps=mask_steps)
    return WorldModel(cfg).eval()


def main(argv=None) -> dict:
    from drivegpt import hostmem

    hostmem.tune()  # as the drivegpt command runs (drivegpt.hostmem)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="demo", choices=list(SIZES))
    ap.add_argument("--batches", default="16,64,256")
    ap.add_argument("--steps", default="4,8", help="parallel passes per frame to measure")
    ap.add_argument("--scales", default="1,3", help="guidance scales")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ar = build(args.size, "ar")
    mg = build(args.size, "maskgit")
    steps = [int(s) for s in args.steps.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    k, (h, w), vocab = ar.cfg.context_frames, ar.cfg.grid, ar.cfg.vocab_size

    def sides():  # name -> (model, mask_steps, scale)
        out = {}
        for s in scales:
            out[f"ar_cfg{s:g}"] = (ar, None, s)
            for n in steps:
                out[f"parallel{n}_cfg{s:g}"] = (mg, n, s)
        return out

    def run(side, tok, pose, speed):
        model, n, s = side
        if n is not None:
            model.cfg.mask_steps = n
        return step(model, tok, pose, speed, cfg_scale=s, generator=torch.Generator().manual_seed(0))

    g = torch.Generator().manual_seed(1)
    flops = {}
    one = (torch.randint(0, vocab, (1, k, h, w), generator=g), torch.randn(1, k, 6, generator=g) * 0.1,
           torch.rand(1, k, generator=g) * 20)
    for name, side in sides().items():
        with FlopCounterMode(display=False) as fc:
            run(side, *one)
        flops[name] = fc.get_total_flops()
    rows = []
    t0 = time.time()
    for b in (int(x) for x in args.batches.split(",")):
        ctx = (torch.randint(0, vocab, (b, k, h, w), generator=g), torch.randn(b, k, 6, generator=g) * 0.1,
               torch.rand(b, k, generator=g) * 20)
        secs = {name: [] for name in sides()}
        for name, side in sides().items():  # warm-up
            run(side, *ctx)
        for _ in range(args.rounds):
            for name, side in sides().items():
                t = time.perf_counter()
                run(side, *ctx)
                secs[name].append(time.perf_counter() - t)
        rate = {name: b / statistics.median(v) for name, v in secs.items()}
        row = {"batch": b, "env_steps_per_s": {n: round(v, 1) for n, v in rate.items()}}
        row["speedup"] = {f"parallel{n}_cfg{s:g}": round(rate[f"parallel{n}_cfg{s:g}"] / rate[f"ar_cfg{s:g}"], 2)
                          for s in scales for n in steps}
        row["speedup_vs_ar_cfg1"] = {f"parallel{n}_cfg{s:g}": round(rate[f"parallel{n}_cfg{s:g}"] / rate["ar_cfg1"], 2)
                                     for s in scales for n in steps} if 1.0 in scales else None
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    out = {"benchmark": "parallel_decoding", "size": args.size, "context_frames": k, "grid": [h, w],
           "tokens_per_frame": h * w, "threads": torch.get_num_threads(),
           "gflop_per_env_step": {n: round(v / 1e9, 4) for n, v in flops.items()}, "batches": rows,
           "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
