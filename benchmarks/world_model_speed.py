"""World-model speed: training tokens/s (and MFU on a GPU); rollout frames/s with the KV cache
vs full recomputation at the same batch and context (2 s at 5 Hz = 10 frames by default).

    python benchmarks/world_model_speed.py [--size tiny|demo|base] [--batch 4] [--context 10]

Prints one JSON line. ``kv_speedup`` = cached frames/s / full-recomputation frames/s (target
>= 10 at 2 s context). Full recomputation is timed over a few tokens of one frame and scaled to
the frame (its cost per token only grows along the frame, so this flatters the baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivegpt.world_model import WorldModel, WorldModelConfig  # noqa: E402
from drivegpt.world_model.sampling import generate_frame  # noqa: E402

SIZES = {  # (n_layer, n_head, n_embd, grid, vocab)
    "tiny": (2, 2, 32, (4, 8), 64),
    "demo": (2, 4, 128, (8, 16), 256),  # configs/experiment/demo.yaml (64x128 frames, 8x16 tokens)
    "base": (8, 8, 512, (8, 16), 1024),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def timed(fn, sync, reps=1):
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="demo", choices=list(SIZES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=10, help="context frames (10 = 2 s at 5 Hz)")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--full-tokens", type=int, default=4, help="tokens timed for full recomputation")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    nl, nh, d, grid, vocab = SIZES[args.size]
    cfg = WorldModelConfig(vocab_size=vocab, grid=grid, max_frames=args.context + 1, n_layer=nl, n_head=nh, n_embd=d)
    model = WorldModel(cfg).to(dev)
    n = cfg.tokens_per_frame
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    # training throughput (forward + backward + AdamW step) on windows of max_frames
    k = cfg.max_frames
    tok = torch.randint(0, vocab, (args.train_batch, k, *grid), device=dev)
    pose, speed = torch.randn(args.train_batch, k, 6, device=dev), torch.rand(args.train_batch, k, device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        with amp:
            out = model(tok, pose, speed)
            loss = torch.nn.functional.cross_entropy(out["logits"].flatten(0, 2).float(), tok.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    reps = 5 if dev.type == "cuda" else 2
    t_step = timed(train_step, sync, reps)
    train_tps = args.train_batch * cfg.block_size / t_step
    res = {"benchmark": "world_model_speed", "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "size": args.size, "params": model.num_params(), "tokens_per_frame": n, "context_frames": args.context,
           "batch": args.batch, "train_tokens_per_s": round(train_tps, 1),
           "train_step_s": round(t_step, 4)}
    if dev.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for kk, v in PEAK_BF16.items() if kk in name), None)
        if peak:
            res["mfu_bf16"] = round(train_tps * model.flops_per_token() / peak, 4)

    # rollout: one frame from `context` frames, greedy, same batch both ways
    model.eval()
    ctx = torch.randint(0, vocab, (args.batch, args.context, *grid), device=dev)
    cp, cs = torch.randn(args.batch, args.context, 6, device=dev), torch.rand(args.batch, args.context, device=dev)
    with torch.no_grad(), amp:
        t_cached = timed(lambda: generate_frame(model, ctx, cp, cs, temperature=0.0), sync, 2)
        m = args.full_tokens
        full_model_tokens = _FullPrefix(model, m)
        t_full_part = timed(lambda: full_model_tokens(ctx, cp, cs), sync, 1)
    t_full = t_full_part / m * n
    res.update(rollout_frames_per_s_kv=round(args.batch / t_cached, 3),
               rollout_frames_per_s_full=round(args.batch / t_full, 4),
               kv_speedup=round(t_full / t_cached, 1), target_kv_speedup=10.0)
    print(json.dumps(res))


class _FullPrefix:
    """The first ``m`` tokens of generate_frame_full (one full forward per token)."""

    def __init__(self, model, m):
        self.model, self.m = model, m

    def __call__(self, ctx, cp, cs):
        model = self.model
        prefix = model.embed_sequence(ctx, cp, cs, open_frame=True)
        cond = model.frame_conditioning(cp, cs, ctx.shape[1] + 1)[:, ctx.shape[1]]
        embs = []
        for i in range(self.m):
            hid = model.hidden(torch.cat([prefix, *embs], dim=1))
            nxt = model.lm_head(hid[:, -1]).argmax(-1)
            embs.append(model.embed_token(nxt, ctx.shape[1], i, cond))


if __name__ == "__main__":
    main()
