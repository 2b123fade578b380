"""Where an imagined RL step's time goes: world-model sampling vs frame decode vs policy.

    python benchmarks/rl_cost_split.py --world-model RUN/06_train_world_model \
        --policy RUN/08_bc --shards RUN/05_tokenize/tokens [--batches 16 256] [--rounds 3]

Loads the trained world model (+ its tokenizer) and policy of a pipeline run, builds the
learned sim exactly as ``drivegpt train policy stage=rl`` does (SAME_STEP autoreset, torch
output, K-frame history) and times, per batch size, the median of ``--rounds`` calls of:
``wm`` (one ``sampling.step``: a whole frame of tokens), ``decode`` (the tokenizer on one frame
per env), ``policy`` (one forward with the bottleneck noise, as in PPO rollouts), ``env_step``
(the whole env step: wm + decode + bookkeeping) and ``rollout_step`` (policy + env step).
Prints ONE JSON line: seconds per call and env steps/s per batch size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch



def _median(fn, rounds: int) -> float:
    fn()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    from drivegpt import hostmem

    hostmem.tune()  # as the drivegpt command runs (drivegpt.hostmem)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-model", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 256])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    args = ap.parse_args()

    from drivegpt.rl.envs import make_learned_env
    from drivegpt.rl.checkpoint import load_policy

    policy = load_policy(args.policy)
    policy.freeze_norm()
    policy.train()
    out = {"world_model": args.world_model, "threads": torch.get_num_threads(), "batches": {}}
    for b in args.batches:
        env = make_learned_env(b, policy.cfg.context_frames, {
            "checkpoint": args.world_model, "shards": args.shards, "val_fraction": args.val_fraction,
            "max_steps": 10_000})
        core = env.env.core
        obs = env.reset(seed=0)
        a = torch.zeros(b, 2)

        def wm():
            rel = torch.cat([core.rel_pose[:, 1:], core.rel_pose[:, -1:]], 1)
            core.models.step_fn(core.models.world_model, core.tokens, rel, core.speed, return_entropy=True)

        def decode():
            core.decode(core.tokens[:, -1])

        def pol():
            with torch.no_grad():
                policy(**obs, noise=policy.sample_noise(b))

        def env_step():
            env.step(a)

        def rollout_step():
            with torch.no_grad():
                m, _, _ = policy(**obs, noise=policy.sample_noise(b))
            env.step(m)

        r = {k: _median(f, args.rounds) for k, f in
             (("wm", wm), ("decode", decode), ("policy", pol), ("env_step", env_step), ("rollout_step", rollout_step))}
        r["steps_per_s_env"] = b / r["env_step"]
        r["steps_per_s_rollout"] = b / r["rollout_step"]
        r["tokens_per_frame"] = int(core.h * core.w)
        out["batches"][str(b)] = r
    print(json.dumps(out))


if __name__ == "__main__":
    main()
