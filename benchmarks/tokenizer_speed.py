"""Tokenizer encode/decode throughput: fp32 eager (baseline) vs the optimized path, one JSON line.

    python benchmarks/tokenizer_speed.py                       # default 128x256 model, random init
    python benchmarks/tokenizer_speed.py --checkpoint runs/tok/tokenizer.pt --batch 256 --compile

Optimized path on CPU: inference_mode + channels_last (+ torch.compile with --compile); on a
GPU: bf16 autocast + channels_last (+ compile). Reports frames/s and the ratio to fp32 eager
measured in the same run. Throughput does not depend on the weights, so a random-init model
of the configured size is a fair stand-in when no checkpoint is given.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from drivegpt.config import compose  # noqa: E402
from drivegpt.tokenizer import Tokenizer, load_tokenizer  # noqa: E402
from drivegpt.tokenizer.model import to_float, to_uint8  # noqa: E402


def timed(fn, reps: int) -> float:
    fn()  # warm-up (and compilation)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def bench(model: Tokenizer, frames: torch.Tensor, device: str, optimized: bool, compile_: bool, reps: int):
    # A private copy per measurement: channels_last (and .to(device)) would otherwise change the
    # caller's model in place, and the fp32-eager baseline measured after it would run channels_last.
    model = copy.deepcopy(model).to(device).eval()
    enc, dec = model.encoder, model.decoder
    x = to_float(frames).to(device)
    if optimized:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        if compile_:
            enc, dec = torch.compile(enc), torch.compile(dec)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (optimized and device == "cuda") else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ctx = torch.inference_mode if optimized else torch.no_grad

    def encode():
        with ctx(), amp:
            _, idx, _ = model.quantizer(enc(x))
        sync()
        return idx

    tokens = encode()
    feats = model.quantizer.embed_tokens(tokens).permute(0, 3, 1, 2).contiguous()
    if optimized:
        feats = feats.contiguous(memory_format=torch.channels_last)

    def decode():
        with ctx(), amp:
            out = to_uint8(dec(feats))
        sync()
        return out

    n = len(frames)
    return n / timed(encode, reps), n / timed(decode, reps), tokens


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--batch", type=int, default=None, help="frames per call (default 256 on GPU, 16 on CPU)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the optimized path")
    ap.add_argument("overrides", nargs="*", help="config overrides for the default model, e.g. experiment=demo")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = load_tokenizer(a.checkpoint) if a.checkpoint else \
        Tokenizer(compose("train_tokenizer", ["run_dir=/tmp/x", *a.overrides]).tokenizer).eval()
    h, w = model.frame_size
    out = {"bench": "tokenizer_speed", "frame_size": [h, w], "grid": list(model.grid), "vocab": model.vocab_size,
           "params": sum(p.numel() for p in model.parameters()), "checkpoint": a.checkpoint,
           "host": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "compile": a.compile}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        b = a.batch or (256 if dev == "cuda" else 16)
        frames = torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8)
        e0, d0, t0 = bench(model, frames, dev, False, False, a.reps)
        e1, d1, t1 = bench(model, frames, dev, True, a.compile, a.reps)
        out[dev] = {"batch": b, "encode_fps_fp32_eager": e0, "decode_fps_fp32_eager": d0,
                    "encode_fps_optimized": e1, "decode_fps_optimized": d1,
                    "encode_speedup": e1 / e0, "decode_speedup": d1 / d0,
                    "optimized": ("bf16 autocast + " if dev == "cuda" else "inference_mode + ") + "channels_last"
                                 + (" + torch.compile" if a.compile else ""),
                    "token_agreement": float((t0.cpu() == t1.cpu()).float().mean())}
        if dev == "cuda":
            out[dev]["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
