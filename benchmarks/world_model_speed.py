"""World-model speed: training tokens/s (and MFU on a GPU); rollout frames/s with the KV cache
vs full recomputation at the same batch and context (2 s at 5 Hz = 10 frames by default).

    python benchmarks/world_model_speed.py [--size tiny|demo|base] [--layers L --heads H --width D
        --grid 8x16 --vocab V] [--batch 4] [--context 10] [--rounds 3] [--threads N]

Prints one JSON line with the model it measured (layers, heads, width, grid, vocab, params).
``kv_speedup`` = median full-recomputation seconds per frame / median cached seconds per frame
(target >= 10 at 2 s context); on a CPU the seconds are the process's CPU time (the work, however
loaded the machine is; pass --threads 1 so that CPU time is one core's), on a GPU wall time;
``kv_speedup_wall`` is the wall-time ratio beside it. Both sides generate one whole frame (every token, greedy) from
the same context: the cached side with ``generate_frame`` (KV cache), the full side with
``generate_frame_full`` (one forward over the whole sequence per token). The two are timed in
alternating rounds (cached, full, cached, full, ...) so that load on a shared machine falls on
both alike; every round's seconds are printed beside the medians. ``tokens_agree`` is the
fraction of the generated tokens on which the two sides agree (1.0 up to float ties).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivegpt.world_model import WorldModel, WorldModelConfig  # noqa: E402
from drivegpt.world_model.sampling import generate_frame, generate_frame_full  # noqa: E402

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


def grid_arg(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def model_shape(args) -> tuple[int, int, int, tuple[int, int], int]:
    """(layers, heads, width, grid, vocab): the --size preset with any explicit flag on top."""
    nl, nh, d, grid, vocab = SIZES[args.size]
    return (args.layers or nl, args.heads or nh, args.width or d, tuple(args.grid) if args.grid else grid,
            args.vocab or vocab)


def interleaved(cached, full, sync, rounds: int) -> dict:
    """Wall and process-CPU seconds of ``cached`` and ``full`` in alternating rounds, after one
    warm-up call of each: {"kv": [(wall, cpu), ...], "full": [...]}."""
    cached(), full()
    sync()
    out = {"kv": [], "full": []}
    for _ in range(rounds):
        for fn, key in ((cached, "kv"), (full, "full")):
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            out[key].append((time.perf_counter() - t, time.process_time() - c))
    return out


def main(argv=None) -> dict:
    from drivegpt import hostmem

    hostmem.tune()  # as the drivegpt command runs (drivegpt.hostmem)
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="demo", choices=list(SIZES), help="preset; the flags below override it")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--width", type=int, default=None, help="n_embd")
    ap.add_argument("--grid", type=grid_arg, default=None, help="token grid HxW, e.g. 8x16")
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=10, help="context frames (10 = 2 s at 5 Hz)")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="alternating cached/full rounds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-train", action="store_true", help="skip the training-throughput figure")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    nl, nh, d, grid, vocab = model_shape(args)
    cfg = WorldModelConfig(vocab_size=vocab, grid=grid, max_frames=args.context + 1, n_layer=nl, n_head=nh, n_embd=d)
    model = WorldModel(cfg).to(dev)
    n = cfg.tokens_per_frame
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    res = {"benchmark": "world_model_speed", "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "size": args.size, "layers": nl, "heads": nh, "width": d,
           "grid": list(grid), "vocab": vocab, "params": model.num_params(), "tokens_per_frame": n,
           "context_frames": args.context, "batch": args.batch}

    if not args.no_train:  # training throughput (forward + backward + AdamW step) on windows of max_frames
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
        res.update(train_batch=args.train_batch, train_tokens_per_s=round(train_tps, 1), train_step_s=round(t_step, 4))
        if dev.type == "cuda":
            name = torch.cuda.get_device_name()
            peak = next((v for kk, v in PEAK_BF16.items() if kk in name), None)
            if peak:
                res["mfu_bf16"] = round(train_tps * model.flops_per_token() / peak, 4)

    # rollout: one whole frame from `context` frames, greedy, same batch and context both ways
    model.eval()
    ctx = torch.randint(0, vocab, (args.batch, args.context, *grid), device=dev)
    cp, cs = torch.randn(args.batch, args.context, 6, device=dev), torch.rand(args.batch, args.context, device=dev)
    got = {}

    def cached():
        got["kv"] = generate_frame(model, ctx, cp, cs, temperature=0.0)[0]

    def full():
        got["full"] = generate_frame_full(model, ctx, cp, cs, temperature=0.0)[0]

    with torch.no_grad(), amp:
        t = interleaved(cached, full, sync, args.rounds)
    med = {(k, i): statistics.median(x[i] for x in v) for k, v in t.items() for i in (0, 1)}
    # On a CPU the process's CPU seconds are the work itself, whatever else the machine runs (a
    # preempted process's wall time is not); on a GPU the wall time is the figure.
    basis = "cpu_time" if dev.type == "cpu" else "wall"
    i = 1 if basis == "cpu_time" else 0
    res.update(rounds=args.rounds,
               rollout_wall_s_kv=[round(x[0], 4) for x in t["kv"]], rollout_wall_s_full=[round(x[0], 4) for x in t["full"]],
               rollout_cpu_s_kv=[round(x[1], 4) for x in t["kv"]], rollout_cpu_s_full=[round(x[1], 4) for x in t["full"]],
               rollout_frames_per_s_kv=round(args.batch / med["kv", i], 3),
               rollout_frames_per_s_full=round(args.batch / med["full", i], 4),
               kv_speedup=round(med["full", i] / med["kv", i], 1), kv_speedup_basis=basis,
               kv_speedup_wall=round(med["full", 0] / med["kv", 0], 1), target_kv_speedup=10.0,
               tokens_agree=round(float((got["kv"] == got["full"]).float().mean()), 4))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
