"""How much of a sim-to-real figure is sampling? A policy's predicted disengagements/100 km in the
learned simulator over more start contexts than the closed-loop stage uses, per group of 16.

    python benchmarks/sim_rate.py --run-dir runs/proof_b1 --envs 64 [--policy CKPT] [OVERRIDE ...]

Builds the learned sim exactly as ``eval policy`` does for its sim-to-real figure
(``drivegpt.stages.eval_policy.sim_predicted_rate``: ``learned_sim`` + ``rl.sim`` settings,
``termination=never``, held-out start contexts, seed ``cfg.seed``), with the run's world model
and token shards, and drives the policy (default: the run's BC) with the same
``rl.train.final_rollouts`` (mean action, ``rl.sim.max_steps`` steps). Env i starts from the context env i of the stage's 16 would; with
``--envs 16`` the figure is the stage's own (331.98 for `runs/proof_b1`, as its metrics.json), with
more envs the first group's tokens differ (one generator samples the whole batch). Extra arguments are hydra overrides of the
``eval_policy`` config (e.g. ``learned_sim.handback_fraction=0.5``). Prints ONE JSON line: the
imagined km, the predicted rate over all envs and per group of 16.

measured (2026-12-07, the AVX2 EPYC, `runs/proof_b1`, 64 envs, ~2 min): 324 per 100 km, groups of
16 318-332 (the stage's 16: 332), so the figure's sampling spread is ~2%; with
``learned_sim.handback_fraction=0.5`` 356 (groups 304-424: each env starts at a handback or not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    from drivegpt import hostmem

    hostmem.tune()  # as the drivegpt command runs (drivegpt.hostmem)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a pipeline run (06_train_world_model, 05_tokenize, 08_bc)")
    ap.add_argument("--envs", type=int, default=64, help="start contexts (a multiple of 16)")
    ap.add_argument("--policy", default=None, help="policy checkpoint (default: RUN/08_bc/policy.pt)")
    ap.add_argument("--experiment", default="proof")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.envs < 16 or args.envs % 16:
        ap.error(f"--envs {args.envs}: must be a positive multiple of 16")
    from drivegpt.config import compose
    from drivegpt.rl.checkpoint import load_policy
    from drivegpt.rl.envs import learned_sim_settings, make_learned_env
    from drivegpt.rl.train import final_rollouts

    run = Path(args.run_dir)
    cfg = compose("eval_policy", [f"experiment={args.experiment}",
                                  f"world_model_checkpoint={run / '06_train_world_model' / 'world_model.pt'}",
                                  f"data.shards={run / '05_tokenize' / 'tokens'}/*/*.tar", *args.overrides])
    settings = learned_sim_settings(cfg)
    settings.update(termination="never", device="cpu")
    policy = load_policy(args.policy or str(run / "08_bc" / "policy.pt")).eval()
    n = int(args.envs)
    env = make_learned_env(n, policy.cfg.context_frames, settings, max_jerk=policy.cfg.max_jerk)
    res = final_rollouts(policy, env, int(settings.get("max_steps", 50)), seed=int(cfg.seed))
    pred, dist = res["predicted_events"], res["distance_m"]

    def rate(sl):
        km = float(dist[sl].sum()) / 1000.0
        return float(pred[sl].sum()) / km * 100.0 if km > 0 else float("nan")

    out = {"benchmark": "sim_rate", "run_dir": str(run), "overrides": args.overrides, "envs": n,
           "km": res["km"], "predicted_per_100km": res["predicted_per_100km"],
           "per_group_of_16": [rate(slice(i, i + 16)) for i in range(0, n, 16)]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
