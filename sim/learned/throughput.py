"""How fast the learned simulator runs against what this machine's matmuls allow.

    fig = measure(env, steps=3)   # env: a batched WorldModelVectorEnv (or a wrapper of one)

- ``flops_per_env_step``: the FLOPs one env step costs, counted by ``torch.utils.flop_counter``
  over one real batched ``env.step`` (world-model context pass + token decoding + the decode of
  the new frame to pixels; matmuls, convolutions and attention, which is where the FLOPs are),
  divided by the batch size;
- ``matmul_flops_per_s``: the machine's practical peak for dense fp32 work: a square matmul's
  FLOP/s on the same device, the best of two libraries (on a CPU, ``torch.matmul``'s BLAS and
  oneDNN's, as a 1x1 convolution over a channels-last tensor, the same product), measured in the
  same call before and after every timed step, the best of those (on a machine shared with other
  jobs one short measurement can read 20x low, and a fraction above 1 then says nothing;
  ``matmul_flops_per_s_min`` shows the spread). Both libraries count because the env step runs on
  both (the world model's linears on BLAS, the tokenizer's convolutions on oneDNN), and on an AMD
  CPU with AVX-512 MKL's sgemm ran at ~200 GFLOP/s where oneDNN's reached ~440: against BLAS alone
  the decoder ran at 1.7x the "peak" (``matmul_flops_per_s_blas``, ``matmul_flops_per_s_onednn``:
  each library's best);
- ``bound_steps_per_s`` = matmul FLOP/s / FLOPs per env step: the env steps/s the machine could
  give if every FLOP ran at matmul speed;
- ``steps_per_s``: measured env steps/s (median of ``steps`` timed batched steps after a warm-up);
- ``roofline_fraction`` = steps_per_s / bound_steps_per_s (the learning issue's target: >= 0.5 at
  batch 256).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_flops_per_s(n: int = 1024, seconds: float = 0.5, device="cpu", backend: str = "blas") -> float:
    """FLOP/s of repeated fp32 n x n matmuls on ``device`` (2 n^3 FLOPs each; median rate).
    ``backend``: "blas" (``torch.matmul``) or "onednn" (the same product as a 1x1 convolution over
    a channels-last [n/64, n, 8, 8] tensor, which PyTorch runs on oneDNN on a CPU; n % 64 == 0)."""
    if backend == "blas":
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        op = lambda: a @ b  # noqa: E731
    elif backend == "onednn":
        if n % 64:
            raise ValueError(f"matmul_flops_per_s: backend 'onednn' needs n % 64 == 0, got n={n}")
        x = torch.randn(n // 64, n, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
        w = torch.randn(n, n, 1, 1, device=device)
        op = lambda: torch.nn.functional.conv2d(x, w)  # noqa: E731
    else:
        raise ValueError(f"matmul_flops_per_s: backend must be 'blas' or 'onednn', got {backend!r}")
    op()
    rates, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(rates) < 3:
        _sync(device)
        t0 = time.perf_counter()
        op()
        _sync(device)
        rates.append(2 * n**3 / max(time.perf_counter() - t0, 1e-9))
    return float(np.median(rates))


def _peaks(device) -> dict:
    """One measurement of each library's matmul rate on ``device`` (oneDNN on a CPU only)."""
    out = {"blas": matmul_flops_per_s(device=device, seconds=0.25)}
    if torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available():
        out["onednn"] = matmul_flops_per_s(device=device, seconds=0.25, backend="onednn")
    return out


def count_step_flops(env, actions) -> float:
    """FLOPs of one batched ``env.step(actions)`` (the env advances one step)."""
    with FlopCounterMode(display=False) as counter:
        env.step(actions)
    return float(counter.get_total_flops())


def measure(env, steps: int = 3, seed: int = 0, device="cpu", actions=None) -> dict:
    """Throughput figures (module docstring) of a batched env; ``actions`` [b, 2] (default:
    uniform in [-1, 1], fixed)."""
    n = int(env.num_envs)
    if actions is None:
        rng = np.random.default_rng(seed)
        actions = torch.as_tensor(rng.uniform(-1, 1, (n, 2)).astype(np.float32), device=device)
    env.reset(seed=seed)
    env.step(actions)  # warm-up
    flops = count_step_flops(env, actions) / n
    times, peaks = [], [_peaks(device)]
    for _ in range(max(1, int(steps))):
        _sync(device)
        t0 = time.perf_counter()
        env.step(actions)
        _sync(device)
        times.append(time.perf_counter() - t0)
        peaks.append(_peaks(device))  # interleaved: same conditions
    sps = n / float(np.median(times))
    best = {lib: max(p[lib] for p in peaks) for lib in peaks[0]}
    peak = max(best.values())
    bound = peak / max(flops, 1.0)
    return {"envs": n, "steps_per_s": sps, "flops_per_env_step": flops, "matmul_flops_per_s": peak,
            "matmul_flops_per_s_min": min(max(p.values()) for p in peaks),
            **{f"matmul_flops_per_s_{lib}": v for lib, v in best.items()},
            "bound_steps_per_s": bound, "roofline_fraction": sps / bound,
            "roofline_fraction_blas": sps * flops / best["blas"],
            "timed_steps": len(times), "torch_threads": torch.get_num_threads()}
