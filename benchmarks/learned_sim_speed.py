"""Env steps/s of the batched learned simulator vs a Python list of single envs.

    python benchmarks/learned_sim_speed.py [--batches 1 16 256] [--steps 4] [--device cpu|cuda]

Tiny real checkpoints (untrained tokenizer + world model at experiment=tiny sizes: 32x64 frames,
2x4 tokens, 16 codes, 3 context frames) written to a temp dir; start contexts from synthetic
token samples. Both sides decode frames (observation=frames), sample tokens (temperature 1)
and share one loaded model; vector and list steps alternate and the median is reported, so
load changes on a shared machine hit both sides alike. The list baseline steps min(batch, --list-max) envs (its per-env
cost is independent of the list length). Prints ONE JSON line: per batch size the vector env's env-steps/s,
the list-of-single-envs' env-steps/s measured in the same run, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivegpt.sim.learned import Models, WorldModelEnv, WorldModelVectorEnv, pool_from_samples  # noqa: E402
from drivegpt.sim.learned.models import check_compatible  # noqa: E402
from drivegpt.sim.learned.testing import fake_samples, tiny_checkpoints  # noqa: E402


def _models(device: str) -> Models:
    from drivegpt.tokenizer import load_tokenizer
    from drivegpt.world_model import load_world_model
    from drivegpt.world_model.sampling import step

    d = tempfile.mkdtemp(prefix="learned_sim_bench_")
    wm_path, tok_path = tiny_checkpoints(d, vocab_size=16, context_frames=3, fps=10.0)
    wm = load_world_model(wm_path).to(device).eval()
    tok = load_tokenizer(tok_path, map_location=device)
    return check_compatible(Models(wm, tok, step, source=str(wm_path)))


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _interleaved(fa, fb, rounds: int) -> tuple[float, float]:
    """Median seconds per call of fa and fb, alternating them so that load changes on a shared
    machine hit both sides alike (one warm-up call each)."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(rounds):
        for fn, acc in ((fa, ta), (fb, tb)):
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            acc.append(time.perf_counter() - t0)
    return float(np.median(ta)), float(np.median(tb))


def main(argv=None) -> dict:
    from drivegpt import hostmem

    hostmem.tune()  # as the drivegpt command runs (drivegpt.hostmem)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--steps", type=int, default=8, help="timed rounds (median) per batch size")
    ap.add_argument("--list-max", type=int, default=16,
                    help="the list baseline steps min(batch, list-max) single envs; a list's per-env "
                         "cost does not depend on its length, so its env-steps/s is per env")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    models = _models(args.device)
    pool = pool_from_samples(fake_samples(n_segments=8, T=40), 3, 2, lambda sid: "val")
    kw = dict(models=models, contexts=pool, stride=2, device=args.device, max_steps=10_000,
              termination="never")
    rng = np.random.default_rng(0)
    out = {"benchmark": "learned_sim_speed", "device": args.device, "torch_threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "steps": args.steps, "batches": {}}
    for b in args.batches:
        venv = WorldModelVectorEnv(b, **kw)
        venv.reset(seed=0)
        acts = rng.uniform(-1, 1, (b, 2)).astype(np.float32)
        envs = [WorldModelEnv(**kw) for _ in range(min(b, args.list_max))]
        for i, e in enumerate(envs):
            e.reset(seed=i)
        t_vec, t_list = _interleaved(lambda: venv.step(acts),
                                     lambda: [e.step(acts[i]) for i, e in enumerate(envs)], args.steps)
        vec, lst = b / t_vec, len(envs) / t_list
        out["batches"][str(b)] = {"vector_env_steps_per_s": round(vec, 2),
                                  "list_of_envs_steps_per_s": round(lst, 2),
                                  "list_envs_timed": len(envs),
                                  "ratio_vector_over_list": round(vec / lst, 2)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
