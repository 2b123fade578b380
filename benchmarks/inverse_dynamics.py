"""How sharp can the pose-following ruler get? The inverse-dynamics net's R^2 on DEV real pairs.

    python benchmarks/inverse_dynamics.py --run-dir runs/proof_c2 \
        --configs '{"segs": 48, "pairs": 2048, "steps": 600}' '{"segs": 80, "pairs": 16384, "steps": 1500}'

``eval world_model`` fits the inverse-dynamics net (``drivegpt.world_model.pose_following``) on
decoded real frame pairs of training segments and reports its R^2 on held-out pairs as the
ceiling of pose following (target >= 0.95). Choosing its sizes on those held-out pairs would tune
the ruler on the evaluation, so this benchmark never reads them: it splits the run's TRAINING
segments (``RUN/05_tokenize/tokens``, the stage's split at ``--val-fraction``) into the first
``--fit-segments`` (the net is fit on up to ``segs`` of them, ``pairs`` pairs, ``steps`` steps)
and the rest (dev: ``--dev-pairs`` pairs scored). Frames are decoded by the run's tokenizer, as the
stage decodes them. Prints ONE JSON line: per config the pairs fit, dev yaw-rate / lateral R^2 and
the fit's seconds.

``"replays": N`` in a config adds, as the stage does (``eval.inverse_dynamics_replays``), N
road-world replays per fit segment along shifted moves; every config is then also scored on the
dev segments' replays of the evaluation's moves (logged, left, right, brake, accelerate: what the
ruler must read in the stage), ``dev_replay_yaw_rate_r2`` / ``dev_replay_lateral_r2``.

measured (2026-12-07, sixth session, AVX-512 bf16 EPYC, ``--run-dir runs/proof_c2``: 109 training
segments, 80 to fit, 29 dev): segments / pairs / steps -> yaw R^2 (lateral): 48 / 2,048 / 600 (the
former sizes) 0.870 (0.797); 80 / 2,048 / 600 0.901 (0.833); 80 / 8,192 / 1,500 0.934 (0.886);
80 / 8,192 / 3,000 0.940 (0.893); 80 / all 11,920 / 1,500 0.942 (0.892), ~70 s a fit. Segments
first, then pairs, then steps: the proof now fits every pair of every training segment, 1,500 steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivegpt.tokenizer import load_tokenizer  # noqa: E402
import numpy as np  # noqa: E402

from drivegpt.stages.eval_world_model import replay_ground_truth  # noqa: E402
from drivegpt.world_model.counterfactual import make_cases, perturb, replay_chain, replay_pairs  # noqa: E402
from drivegpt.world_model.evaluate import held_out_items, real_pairs  # noqa: E402
from drivegpt.world_model.pose_following import (following_metrics, predict_motion,  # noqa: E402
                                                 train_inverse_dynamics)

KINDS = ("logged", "left", "right", "brake", "accelerate")


def dev_replays(cases, tok, fps: float, yaw_rate: float = 0.15, accel: float = 1.5):
    """(a, b, targets) of the road world's replays of the evaluation's moves from ``cases``, decoded
    through the tokenizer as the stage reads them."""
    c = len(cases[0].tokens)
    n = len(cases[0].rel_pose) - c
    chains = [replay_chain(case, perturb(case.rel_pose[c - 1:], case.speed[c - 1:], kind, 1.0 / fps, yaw_rate,
                                         accel)[0][:n], tok, replay_ground_truth, fps)
              for case in cases for kind in KINDS]
    return tuple(np.concatenate(parts) for parts in zip(*chains))


def dev_split(shards: str, val_fraction: float, fit_segments: int):
    """The TRAINING segments of ``shards`` (the stages' split), as (fit, dev): the first
    ``fit_segments`` and the rest. Held-out segments are never read."""
    train = held_out_items(shards, "train", val_fraction, None)
    if len(train) <= fit_segments:
        raise ValueError(f"{shards}: {len(train)} training segments, need more than --fit-segments={fit_segments}")
    return train[:fit_segments], train[fit_segments:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a pipeline run (03_train_tokenizer, 05_tokenize)")
    ap.add_argument("--configs", nargs="+", default=['{"segs": 48, "pairs": 2048, "steps": 600}'],
                    help='JSON objects: {"segs": N, "pairs": N, "steps": N}')
    ap.add_argument("--val-fraction", type=float, default=0.3, help="the run's data.val_fraction")
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--fps", type=float, default=20.0, help="the log rate (pairs are stride frames apart)")
    ap.add_argument("--fit-segments", type=int, default=80)
    ap.add_argument("--dev-pairs", type=int, default=1024)
    ap.add_argument("--context", type=int, default=5, help="the world model's context frames (replay cases)")
    ap.add_argument("--future", type=int, default=10, help="frames of each replay (the evaluation's 2 s)")
    args = ap.parse_args()

    run = Path(args.run_dir)
    tok = load_tokenizer(run / "03_train_tokenizer" / "tokenizer.pt")
    fit, dev = dev_split(str(run / "05_tokenize" / "tokens"), args.val_fraction, args.fit_segments)
    rate = args.fps / args.stride
    held = real_pairs(dev, tok, args.stride, rate, args.dev_pairs, 1)
    dev_cases = make_cases(dev, args.context, args.future, args.stride, len(dev))
    held_cf = dev_replays(dev_cases, tok, rate) if dev_cases else None
    out = {"benchmark": "inverse_dynamics", "run_dir": str(run), "fit_segments": len(fit),
           "dev_segments": len(dev), "dev_pairs": len(held[2]),
           "dev_replay_pairs": 0 if held_cf is None else len(held_cf[2]), "configs": []}
    for spec in args.configs:
        c = json.loads(spec)
        segs = fit[:int(c["segs"])]
        pairs = real_pairs(segs, tok, args.stride, rate, int(c["pairs"]), 0)
        cf = replay_pairs(make_cases(segs, args.context, args.future, args.stride, len(segs)), tok,
                          replay_ground_truth, rate, int(c.get("replays", 0)), 0.25, 1.5, 0)
        if cf is not None:
            pairs = tuple(np.concatenate([p, q]) for p, q in zip(pairs, cf))
        t0 = time.time()
        net, mean, std = train_inverse_dynamics(*pairs, steps=int(c["steps"]), seed=0)
        m = following_metrics(predict_motion(net, mean, std, held[0], held[1]), held[2], "")
        row = {**c, "pairs_fit": len(pairs[2]), "yaw_rate_r2": round(m["yaw_rate_r2"], 4),
               "lateral_r2": round(m["lateral_r2"], 4)}
        if held_cf is not None:
            r = following_metrics(predict_motion(net, mean, std, held_cf[0], held_cf[1]), held_cf[2], "")
            row.update(dev_replay_yaw_rate_r2=round(r["yaw_rate_r2"], 4), dev_replay_lateral_r2=round(r["lateral_r2"], 4))
        out["configs"].append({**row, "fit_seconds": round(time.time() - t0, 1)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
