"""Pose following against fidelity along the classifier-free guidance scale of a trained world model.

    python benchmarks/world_model_guidance.py --run-dir runs/demo_s16 --experiment demo
    python benchmarks/world_model_guidance.py --run-dir RUN --experiment proof --scales 1,3 --contexts 12

For every guidance scale s (``sampling.step(..., cfg_scale=s)``: 0 = the pose-zeroed model, 1 =
the plain conditional model the evaluation and the learned sim use), the evaluation's
counterfactual rollouts from the held-out contexts of ``RUN/05_tokenize/tokens`` are scored as
``drivegpt eval world_model`` scores them: pose-following yaw-rate / lateral R^2 (the
inverse-dynamics net on (previous, generated) frames against the commanded move), command
following (is rollout(c) nearest to the road world's replay of c) and the 1 s / 2 s PSNR gain over
copy-last-frame. One JSON line, a row per scale.

It answers "has the model learned the pose but does greedy decoding at scale 1 underuse it?": if
R^2 rises with s while PSNR falls, the conditional and the unconditional predictions differ in the
right direction but the plain conditional is too timid. On the held-out contexts (``--split val``,
the default) it is a diagnostic, not a way to choose the scale (that would tune on the
evaluation); ``--split train`` scores contexts from the training segments instead, where a scale
may be chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("pose_following_yaw_rate_r2", "pose_following_lateral_r2", "command_following_accuracy",
        "command_following_margin_db", "psnr_gain_1s", "psnr_gain_2s", "pose_following_yaw_rate_r2_by_frame")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a pipeline run (its 05_tokenize/tokens and 06_train_world_model)")
    ap.add_argument("--experiment", default="demo", help="the preset the run used (data split and window settings)")
    ap.add_argument("--world-model", default=None, help="score this world_model.pt instead of the run's")
    ap.add_argument("--scales", default="0,1,2,3", help="comma-separated guidance scales")
    ap.add_argument("--contexts", type=int, default=None, help="contexts (default: the preset's eval)")
    ap.add_argument("--split", default="val", choices=("val", "train"),
                    help="contexts from the held-out segments (val) or the training ones (train: to choose a scale)")
    ap.add_argument("--mask-steps", type=int, default=None,
                    help="a maskgit model's sampling passes per frame (default: the model's mask_steps)")
    ap.add_argument("--retokenize", action="store_true",
                    help="later steps read each generated frame's tokenizer round trip (eval.retokenize)")
    args = ap.parse_args(argv)
    from drivegpt.config import compose
    from drivegpt.stages.eval_world_model import bind_model_windows, counterfactual_and_following
    from drivegpt.tokenizer import load_tokenizer
    from drivegpt.world_model.checkpoint import load_world_model

    run = Path(args.run_dir)
    ckpt = Path(args.world_model) if args.world_model else run / "06_train_world_model" / "world_model.pt"
    t0 = time.time()
    model = load_world_model(ckpt).eval()
    if args.mask_steps:
        model.cfg.mask_steps = args.mask_steps
    tokenizer = load_tokenizer(model.tokenizer_path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # the stage's plots go here, not into the run
        for s in (float(x) for x in args.scales.split(",")):
            over = [f"experiment={args.experiment}", f"run_dir={tmp}", f"checkpoint={ckpt}",
                    f"data.shards={run / '05_tokenize' / 'tokens'}", f"eval.cfg_scale={s}",
                    f"eval.retokenize={str(args.retokenize).lower()}"]
            if args.contexts:
                over.append(f"eval.counterfactual_contexts={args.contexts}")
            cfg = bind_model_windows(compose("eval_world_model", over), model)
            res = counterfactual_and_following(cfg, model, tokenizer, Path(tmp), split=args.split)
            rows.append({"cfg_scale": s, **{k: res.get(k) for k in KEYS}})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = {"benchmark": "world_model_guidance", "world_model": str(ckpt), "split": args.split,
           "retokenize": args.retokenize,
           "decoding": model.cfg.decoding, "mask_steps": model.cfg.mask_steps if model.cfg.decoding == "maskgit" else None,
           "contexts": res.get("counterfactual_cases"),
           "ceiling_yaw_rate_r2": res.get("pose_following_yaw_rate_r2_ceiling"),
           "ceiling_lateral_r2": res.get("pose_following_lateral_r2_ceiling"), "scales": rows,
           "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
