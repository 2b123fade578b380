"""Where does a world model lose the commanded move along its rollout? Frame by frame, the
pose-following ruler's yaw-rate R^2 on

- ``rollout``: the model's own open-loop rollout (the evaluation's);
- ``retokenized``: the same, each generated frame read by the later steps through the tokenizer's
  round trip (``eval.retokenize``, README "World model", *Retokenized rollouts*);
- ``teacher_forced``: one step at a time from the road world's TRUE replay frames of the same
  moves (tokenized): the model's one-step fidelity at every point of the 2 s, without its own
  frames in the context;
- ``true``: the true replay frames (tokenized): the ruler's ceiling on these moves;

and the 1 s / 2 s PSNR gain over copy-last-frame of the two rollouts. With ``--cfg-scale 0`` the
same for the pose-zeroed model.

    python benchmarks/rollout_drift.py --run-dir runs/proof_d2 --contexts 24

Contexts are the LAST ``--contexts`` training segments (dev, never the held-out ones); the ruler is
fit as the stage fits it (real pairs and replays along shifted moves, ``eval.inverse_dynamics_*``)
on the other training segments. One JSON line.

measured (2026-12-07, the AVX-512 bf16 EPYC, runs/proof_d2, 24 contexts x 4 commands, ~4 min):
yaw R^2 rollout 0.42 (frame by frame 0.78 -> 0.12), teacher forced 0.78 (0.78 -> 0.74), true 0.95;
retokenized 0.57 (0.78 -> 0.28). PSNR gain 1 s / 2 s: rollout +0.48 / +0.18, retokenized +0.30 /
-0.20; the pose-zeroed model +0.45 / +0.25, retokenized +0.10 / -0.16.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, help="a pipeline run (03_train_tokenizer, 05_tokenize, 06_train_world_model)")
    ap.add_argument("--experiment", default="proof")
    ap.add_argument("--world-model", default=None, help="score this world model instead of the run's")
    ap.add_argument("--contexts", type=int, default=24, help="the last N training segments' contexts")
    ap.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (default: the preset's eval.cfg_scale)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from drivegpt import hostmem
    from drivegpt.config import compose
    from drivegpt.stages.eval_world_model import bind_model_windows, replay_ground_truth, ruler_pairs
    from drivegpt.tokenizer import load_tokenizer
    from drivegpt.world_model.checkpoint import load_world_model
    from drivegpt.world_model.counterfactual import make_cases, perturb
    from drivegpt.world_model.evaluate import held_out_items
    from drivegpt.world_model.metrics import psnr
    from drivegpt.world_model.pose_following import motion_targets, predict_motion, r2, train_inverse_dynamics
    from drivegpt.world_model.sampling import step

    hostmem.tune()
    run = Path(args.run_dir)
    ckpt = args.world_model or str(run / "06_train_world_model")
    cfg = compose("eval_world_model", [f"experiment={args.experiment}", f"checkpoint={ckpt}",
                                       f"data.shards={run / '05_tokenize' / 'tokens'}"])
    model = load_world_model(cfg.checkpoint).eval()
    cfg = bind_model_windows(cfg.copy(), model)
    tok = load_tokenizer(model.tokenizer_path)
    e, d = cfg.eval, cfg.data
    stride, fps = int(d.stride), float(d.fps) / float(d.stride)
    n = int(round(max(float(s) for s in e.seconds) * fps))
    dt, c = 1.0 / fps, model.cfg.context_frames
    scale = float(e.cfg_scale if args.cfg_scale is None else args.cfg_scale)
    h, w = tok.frame_size
    t0 = time.time()
    train = held_out_items(str(d.shards), "train", float(d.val_fraction), None, skip_bad=bool(d.get("skip_bad", False)))
    fit, dev = train[:-args.contexts], train[-args.contexts:]
    pairs, _ = ruler_pairs(e, fit, tok, c, n, stride, fps)
    net, mu, sd = train_inverse_dynamics(*pairs, steps=int(e.inverse_dynamics_steps), seed=int(e.seed))
    commands = [str(x) for x in e.commands]
    recs = []
    for case in make_cases(dev, c, n, stride, args.contexts):
        for kind in commands:
            moves, speeds = perturb(case.rel_pose[c - 1:], case.speed[c - 1:], kind, dt, float(e.steer_yaw_rate),
                                    float(e.accel))
            true = replay_ground_truth(case, moves[:n], h, w)
            recs.append({"ctx": torch.as_tensor(case.tokens, dtype=torch.long), "moves": moves[:n],
                         "pose": np.concatenate([case.rel_pose[: c - 1], moves[:n]]),
                         "speed": np.concatenate([case.speed[: c - 1], speeds[:n]]),
                         "true_tokens": tok.encode(torch.as_tensor(true)).long(), "true": true})
    r = len(recs)
    cmd = np.stack([motion_targets(x["moves"], fps) for x in recs])
    pose = torch.as_tensor(np.stack([x["pose"] for x in recs]), dtype=torch.float32)
    speed = torch.as_tensor(np.stack([x["speed"] for x in recs]), dtype=torch.float32)
    true_tok = torch.stack([x["true_tokens"] for x in recs])
    last = np.asarray(tok.decode(torch.stack([x["ctx"][-1] for x in recs])))
    truth = np.stack([x["true"] for x in recs])

    def frames_of(read_true: bool, snap: bool) -> np.ndarray:
        ctx, out, g = torch.stack([x["ctx"] for x in recs]), [], torch.Generator().manual_seed(int(e.seed))
        for j in range(n):
            k = c + j
            nxt, _ = step(model, ctx[:, -c:], pose[:, k - c:k], speed[:, k - c:k], 0.0, None, scale, g)
            out.append(np.asarray(tok.decode(nxt)))
            read = true_tok[:, j] if read_true else (tok.retokenize(nxt) if snap else nxt)
            ctx = torch.cat([ctx, read.to(ctx)[:, None]], 1)
        return np.stack(out, 1)

    true_frames = np.asarray(tok.decode(true_tok.flatten(0, 1))).reshape(r, n, h, w, 3)
    out = {"benchmark": "rollout_drift", "world_model": ckpt, "cfg_scale": scale, "contexts": args.contexts,
           "commands": commands}
    for name, frames in (("rollout", frames_of(False, False)), ("retokenized", frames_of(False, True)),
                         ("teacher_forced", frames_of(True, False)), ("true", true_frames)):
        prev = np.concatenate([last[:, None], (true_frames if name == "teacher_forced" else frames)[:, :-1]], 1)
        p = predict_motion(net, mu, sd, prev.reshape(r * n, h, w, 3), frames.reshape(r * n, h, w, 3)).reshape(r, n, 2)
        row = {"yaw_rate_r2": r2(p[..., 0].ravel(), cmd[..., 0].ravel()),
               "lateral_r2": r2(p[..., 1].ravel(), cmd[..., 1].ravel()),
               "yaw_rate_r2_by_frame": [r2(p[:, j, 0], cmd[:, j, 0]) for j in range(n)]}
        if name in ("rollout", "retokenized"):
            for s in e.seconds:
                j = int(round(float(s) * fps)) - 1
                row[f"psnr_gain_{float(s):g}s"] = float(psnr(frames[:, j], truth[:, j]).mean()
                                                        - psnr(last, truth[:, j]).mean())
        out[name] = row
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
