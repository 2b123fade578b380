"""RL vs BC in the ground truth: disengagements/100 km and mean speed on held-out scenarios.

    python benchmarks/policy_closed_loop.py --bc runs/demo/08_bc --rl runs/demo/09_rl
    python benchmarks/policy_closed_loop.py --pipeline-dir runs/demo          # finds NN_bc, NN_rl
    python benchmarks/policy_closed_loop.py --build runs/bench --world-model WM --tokens TOKENS
    python benchmarks/policy_closed_loop.py --build runs/bench --full --experiment tiny   # everything

Target (issue 6): RL disengagements/100 km <= 0.5 x BC's at >= 90% of BC's mean speed. The
baseline (BC) is measured in the same run, on the same seeded held-out scenarios (RoadWorld
seeds ``--first-seed`` + i, never in the fleet), with the evaluation stage's own code
(``rl.evaluate.drive`` + ``rl.metrics``); nothing here is tuned to the result.

``--build DIR`` trains what is missing first: a fleet (``drivegpt fleet generate``), BC on it,
and RL from BC in the learned sim when ``--world-model`` and ``--tokens`` are given (``--full``:
train the tokenizer and world model on the same fleet too).
Prints ONE JSON line: both rows, the two ratios, whether the target is met, policy sizes
(parameters, FLOPs per frame, checkpoint bytes) and training times from the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _find(run: Path, suffix: str) -> Path | None:
    hits = sorted(run.glob(f"*_{suffix}/policy.pt")) + sorted(run.glob(f"{suffix}/policy.pt"))
    return hits[0] if hits else None


def _stage(name: str, overrides: list[str]) -> dict:
    from drivegpt.config import compose
    from drivegpt.stages import REGISTRY, load

    return load(name)(compose(REGISTRY[name].config, overrides)) or {}


def encode_fleet(fleet_shards: Path, tokenizer_path: Path, out: Path) -> Path:
    """Token shards of a fleet (what ``drivegpt tokenize`` writes), encoded in-process."""
    import numpy as np
    import torch

    from drivegpt.data.shards import write_shards
    from drivegpt.data.shard_reading import expand_urls, iter_samples
    from drivegpt.tokenizer import load_tokenizer

    if (out / "manifest.json").exists():
        return out
    tok = load_tokenizer(tokenizer_path)
    items = []
    with torch.no_grad():
        for seg in iter_samples(expand_urls(str(fleet_shards))):
            codes = torch.cat([tok.encode(torch.as_tensor(seg.frames[i:i + 64]))
                               for i in range(0, len(seg.frames), 64)]).cpu().numpy().astype(np.int16)
            item = {k: v for k, v in seg.arrays().items() if k not in ("traffic", "lane_mask")}
            item["tokens"] = codes
            item["meta"] = dict(seg.meta, tokens={"vocab_size": int(tok.vocab_size), "grid": list(tok.grid),
                                                  "tokenizer_path": str(tokenizer_path)})
            items.append(item)
    write_shards(out, len(items), items.__getitem__, maxcount=4, progress=False)
    return out


def build_world_model(args, out: Path, fleet_shards: Path, common: list[str]) -> tuple[str, str]:
    tok = out / "tokenizer"
    if not (tok / "tokenizer.pt").exists():
        _stage("train_tokenizer",
               common + [f"data.shards={fleet_shards}", f"run_dir={tok}", f"trainer.max_steps={args.tok_steps}"])
    tokens = encode_fleet(fleet_shards, tok / "tokenizer.pt", out / "tokens")
    wm = out / "world_model"
    if not (wm / "world_model.pt").exists():
        _stage("train_world_model",
               common + [f"data.shards={tokens}", f"run_dir={wm}", f"trainer.max_steps={args.wm_steps}"])
    return str(wm / "world_model.pt"), str(tokens)


def build(args) -> tuple[Path, Path | None]:
    out = Path(args.build)
    common = ([f"experiment={args.experiment}"] if args.experiment else []) + list(args.override)
    fleet = out / "fleet"
    if not (fleet / "shards" / "manifest.json").exists():
        _stage("fleet_generate",
               common + [f"out={fleet / 'shards'}", f"run_dir={fleet}", f"segments={args.segments}",
                         f"seconds={args.segment_seconds}"])
    bc = out / "bc"
    if not (bc / "policy.pt").exists():
        _stage("train_policy", common + ["stage=bc", f"data.shards={fleet / 'shards'}",
                                                     f"run_dir={bc}", f"trainer.max_steps={args.bc_steps}",
                                                     "trainer.ckpt_path=last"])
    if args.full and not (args.world_model and args.tokens):
        args.world_model, args.tokens = build_world_model(args, out, fleet / "shards", common)
    rl = None
    if args.world_model and args.tokens:
        rl = out / "rl"
        if not (rl / "policy.pt").exists():
            _stage("train_policy", common + [
                "stage=rl", f"checkpoint={bc}", f"world_model_checkpoint={args.world_model}",
                f"data.shards={args.tokens}", f"run_dir={rl}", f"rl.ppo.iterations={args.rl_iterations}",
                "trainer.ckpt_path=last"])
        rl = rl / "policy.pt"
    return bc / "policy.pt", rl


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bc")
    ap.add_argument("--rl")
    ap.add_argument("--pipeline-dir")
    ap.add_argument("--build")
    ap.add_argument("--world-model")
    ap.add_argument("--tokens")
    ap.add_argument("--experiment", default=None)
    ap.add_argument("--override", action="append", default=[], help="hydra override for every built stage")
    ap.add_argument("--full", action="store_true", help="--build also trains tokenizer + world model")
    ap.add_argument("--tok-steps", type=int, default=300)
    ap.add_argument("--wm-steps", type=int, default=300)
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--segment-seconds", type=float, default=30)
    ap.add_argument("--bc-steps", type=int, default=400)
    ap.add_argument("--rl-iterations", type=int, default=50)
    ap.add_argument("--scenarios", type=int, default=72)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--first-seed", type=int, default=1_000_000)
    ap.add_argument("--stride", type=int, default=4, help="decision stride when the checkpoint has none")
    args = ap.parse_args(argv)

    import torch

    from drivegpt.config import compose
    from drivegpt.rl.evaluate import drive
    from drivegpt.rl.metrics import closed_loop_metrics
    from drivegpt.rl.checkpoint import load_policy, read_checkpoint
    from drivegpt.rl.policy import count_flops

    bc_path, rl_path = (Path(args.bc) if args.bc else None), (Path(args.rl) if args.rl else None)
    if args.pipeline_dir:
        bc_path = bc_path or _find(Path(args.pipeline_dir), "bc")
        rl_path = rl_path or _find(Path(args.pipeline_dir), "rl")
    if args.build:
        b, r = build(args)
        bc_path, rl_path = bc_path or b, rl_path or r
    if bc_path is None:
        ap.error("no BC policy: give --bc, --pipeline-dir or --build")

    seeds = [args.first_seed + i for i in range(args.scenarios)]
    out: dict = {"scenarios": len(seeds), "seconds_per_scenario": args.seconds,
                 "note": "2-core CPU shared with other jobs: timings are pessimistic"}
    rows = {}
    for name, path in (("bc", bc_path), ("rl", rl_path)):
        if path is None:
            out[name] = None
            continue
        policy = load_policy(path)
        h, w = policy.obs_shape[1:3]
        cfg = compose("eval_policy", [f"data.frame_height={h}", f"data.frame_width={w}"])
        t0 = time.perf_counter()
        stride = int(policy.checkpoint_meta.get("stride", args.stride))  # the stride it was trained at
        trajs = drive(name, seeds, args.seconds, cfg.sim, policy, stride,
                      "cuda" if torch.cuda.is_available() else "cpu")
        m = closed_loop_metrics(trajs)
        meta = read_checkpoint(path).get("meta", {}).get("metrics", {})
        f = count_flops(policy)
        rows[name] = m
        out[name] = {
            "per_100km": m["per_100km"], "STEER_per_100km": m["STEER_per_100km"],
            "BRAKE_per_100km": m["BRAKE_per_100km"], "GAS_per_100km": m["GAS_per_100km"],
            "mean_speed": m["mean_speed"], "speed_ratio_to_flow": m["speed_ratio"], "km": m["km"],
            "lane_error_mean": m["lane_error_mean"], "eval_seconds": time.perf_counter() - t0,
            "params": f["params"], "flops_per_frame": f["flops_per_frame"],
            "checkpoint_bytes": Path(read_checkpoint(path)["path"]).stat().st_size,
            "train_seconds": meta.get(f"{name}/train_seconds"),
        }
    if rows.get("rl") and rows.get("bc"):
        bc, rl = rows["bc"], rows["rl"]
        dis_ratio = rl["per_100km"] / bc["per_100km"] if bc["per_100km"] > 0 else float("nan")
        speed_ratio = rl["mean_speed"] / bc["mean_speed"] if bc["mean_speed"] > 0 else float("nan")
        out.update(rl_over_bc_disengagements=dis_ratio, rl_over_bc_speed=speed_ratio,
                   target_met=bool(rl["per_100km"] <= 0.5 * bc["per_100km"] and speed_ratio >= 0.9))
    else:
        out.update(rl_over_bc_disengagements=None, rl_over_bc_speed=None, target_met=None,
                   missing="no RL policy (give --rl, or --build with --world-model and --tokens)")
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":
    main()
