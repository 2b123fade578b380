"""World-model quality on the road-world fleet: drive a fleet, tokenize it, train the world model,
run `eval world_model`, print one JSON line (size, training time, metrics vs the issue's targets).

    python benchmarks/world_model_quality.py --tokenizer patch --segments 24 --seconds 30 --steps 1500
    python benchmarks/world_model_quality.py --tokenizer runs/tok/tokenizer.pt ...

``--tokenizer patch`` uses the fixed patch-colour quantizer (drivegpt.world_model.patch_tokenizer)
instead of a trained VQ tokenizer. Baselines measured in the same run: copy-last-frame PSNR
(counterfactual), the disengagement base rate (AP), R^2 = 0 (pose-following).
Targets: PSNR >= copy-last + 3 dB at 1 s; yaw-rate R^2 >= 0.9; 2 s disengagement AUROC >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivegpt.config import compose  # noqa: E402

_TOK = None


def _tokenizer(spec: str, h: int, w: int):
    if spec == "patch":
        from drivegpt.world_model.patch_tokenizer import PatchTokenizer

        return PatchTokenizer(h, w)
    from drivegpt.tokenizer import load_tokenizer

    return load_tokenizer(spec)


def token_item(i: int, args) -> dict:
    from drivegpt.sim.roadworld import drive_segment

    seg = drive_segment(args.first_seed + i, args.seconds, None, args.height, args.width)
    with torch.no_grad():
        tok = torch.cat([torch.as_tensor(_TOK.encode(seg.frames[j:j + 64])).cpu()
                         for j in range(0, len(seg), 64)]).numpy().astype(np.int16)
    meta = dict(seg.meta, tokens={"vocab_size": int(_TOK.vocab_size), "grid": list(tok.shape[1:]),
                                  "tokenizer_path": None if args.tokenizer == "patch" else args.tokenizer})
    return dict({k: v for k, v in seg.arrays().items() if k != "lane_mask"}, tokens=tok, meta=meta)


def main():
    global _TOK
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="patch")
    ap.add_argument("--segments", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("overrides", nargs="*", help="extra hydra overrides for train (e.g. world_model.n_embd=256)")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="wm_quality_"))
    _TOK = _tokenizer(args.tokenizer, args.height, args.width)
    from drivegpt.data.shards import write_shards

    t0 = time.time()
    shards = work / "tokens"
    write_shards(shards, args.segments, lambda i: token_item(i, args), maxcount=4, workers=1, progress=False)
    fleet_s = time.time() - t0

    from drivegpt.stages import eval_world_model as evaluate
    from drivegpt.stages import train_world_model as train

    common = [f"experiment={args.experiment}", f"data.shards={shards}", "logger.kind=none",
              f"data.frame_height={args.height}", f"data.frame_width={args.width}", "data.num_workers=0"]
    tcfg = compose("train_world_model", common + [f"run_dir={work / 'train'}", f"trainer.max_steps={args.steps}",
                                                   "trainer.enable_progress_bar=false", *args.overrides])
    tm = train.run(tcfg)
    ecfg = compose("eval_world_model", common + [f"run_dir={work / 'eval'}", f"checkpoint={work / 'train' / 'world_model.pt'}"])
    em = evaluate.run(ecfg, tokenizer=_TOK)
    keys = ["bits_per_token", "top1", "bits_per_token_next_frame", "psnr_1s", "psnr_copy_last_1s", "psnr_gain_1s",
            "psnr_2s", "psnr_copy_last_2s", "psnr_gain_2s", "ssim_1s", "ssim_copy_last_1s", "ssim_2s",
            "pose_following_yaw_rate_r2", "pose_following_lateral_r2", "pose_following_yaw_rate_mae",
            "real_pairs_yaw_rate_r2", "disengage_auroc_2s", "disengage_ap_2s", "disengage_base_rate_2s",
            "disengage_positives_2s", "counterfactual_cases"]
    res = {"benchmark": "world_model_quality", "tokenizer": args.tokenizer, "device": "cuda" if torch.cuda.is_available() else "cpu",
           "segments": args.segments, "seconds": args.seconds, "frame": [args.height, args.width],
           "params": tm["params"], "steps": tm["global_step"], "train_seconds": round(tm["train_seconds"], 1),
           "fleet_seconds": round(fleet_s, 1), "eval_seconds": round(em["eval_seconds"], 1), "work_dir": str(work)}
    res.update({k: (round(em[k], 4) if isinstance(em.get(k), float) else em.get(k)) for k in keys})
    g1, r2y, au = em.get("psnr_gain_1s"), em.get("pose_following_yaw_rate_r2"), em.get("disengage_auroc_2s")
    res["targets_met"] = {"psnr_gain_1s>=3dB": g1 is not None and g1 >= 3, "yaw_rate_r2>=0.9": r2y is not None and r2y >= 0.9,
                          "auroc_2s>=0.9": au is not None and au >= 0.9}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
