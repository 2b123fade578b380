"""How much of the 2 s disengagement hazard the token frames carry: a small conv net on tokens.

    python benchmarks/hazard_probe.py --tokens RUN/05_tokenize/tokens [--world-model RUN/.../world_model.pt]

A diagnostic for the world model's disengagement head. The probe sees what the head's start token
S_k sees (the tokens of frames k-2 and k-1, the commanded move into frame k and the speed at k-1)
and predicts the window labels of frame k (STEER, BRAKE, GAS within 2 s), trained class-balanced
on the training segments, scored on the held-out ones (``split_of``, the same split as every
stage). Printed beside it in the same JSON line: the speed-only logistic regression (the
scoreboard's baseline) and, with ``--world-model``, that model's own head on the same windows.
If the probe beats the world model's head by far, the information is in the tokens and the
head's training is what limits it; if the probe is near the baseline, the tokens do not carry it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivegpt.data.labels import DEFAULT_HORIZONS  # noqa: E402
from drivegpt.data.loaders import segment_windows, split_of  # noqa: E402
from drivegpt.data.shard_reading import iter_samples  # noqa: E402
from drivegpt.world_model.metrics import _auroc_ap, speed_baseline  # noqa: E402

CAUSES = ("steer", "brake", "gas")


def windows(shards: str, stride: int, val_fraction: float, k: int) -> dict:
    """Arrays of every window of k frames (split by segment): tokens [N,k,h,w], rel_pose [N,k,6],
    speed [N,k], target/mask [N,k,H,3]."""
    out = {s: {"tokens": [], "rel_pose": [], "speed": [], "target": [], "mask": []} for s in ("train", "val")}
    for item in iter_samples(shards, frames=False):
        split = split_of(str(item["meta"]["segment_id"]), val_fraction)
        for w in segment_windows(item, k, stride, key="tokens", horizons=DEFAULT_HORIZONS):
            d = out[split]
            d["tokens"].append(w["tokens"]); d["rel_pose"].append(w["rel_pose"]); d["speed"].append(w["speed"])
            d["target"].append(w["targets"]); d["mask"].append(w["mask"])
    return {s: {key: torch.as_tensor(np.stack(v)) for key, v in d.items()} for s, d in out.items() if d["tokens"]}


class Probe(nn.Module):
    def __init__(self, vocab: int, frames: int, width: int = 48):
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.conv = nn.Sequential(nn.Conv2d(16 * frames, width, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GELU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.head = nn.Sequential(nn.Linear(2 * width + 7, 64), nn.GELU(), nn.Linear(64, 3))

    def forward(self, tokens, cond):  # tokens [b, f, h, w], cond [b, 7]
        x = self.emb(tokens).permute(0, 1, 4, 2, 3).flatten(1, 2)  # b (f*16) h w
        x = self.conv(x)
        x = torch.cat([x.mean((2, 3)), x.amax((2, 3)), cond], 1)
        return self.head(x)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", required=True, help="token shard directory or pattern (the tokenize stage's out)")
    ap.add_argument("--world-model", default=None, help="also score this world model's head on the same windows")
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--val-fraction", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--horizon", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    pat = args.tokens if args.tokens.endswith(".tar") or "*" in args.tokens else str(Path(args.tokens) / "*" / "*.tar")
    t0 = time.perf_counter()
    wm = None
    if args.world_model:
        from drivegpt.world_model import load_world_model

        wm = load_world_model(args.world_model).eval()
    # windows end at the labelled frame; the probe reads its two predecessors, the world model
    # its whole context (the same windows, so the same labelled frames)
    k = max(3, wm.cfg.max_frames if wm is not None else 3)
    data = windows(pat, args.stride, args.val_fraction, k)
    hi = list(DEFAULT_HORIZONS).index(args.horizon)
    vocab = int(max(int(d["tokens"].max()) for d in data.values())) + 1

    def xy(d):
        cond = torch.cat([d["rel_pose"][:, -2], d["speed"][:, -2:-1]], 1)  # move into the last frame, speed before
        return d["tokens"][:, -3:-1].long(), cond, d["target"][:, -1, hi].float(), d["mask"][:, -1, hi].bool()

    tr, va = xy(data["train"]), xy(data["val"])
    mean, std = tr[1].mean(0), tr[1].std(0).clamp_min(1e-3)
    norm = lambda c: ((c - mean) / std).clamp(-10, 10)  # noqa: E731
    rate = ((tr[2] * tr[3]).sum(0) / tr[3].sum(0).clamp_min(1)).clamp(1e-3, 0.5)  # positive rate per cause
    model = Probe(vocab, 2)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-2)
    n = len(tr[0])
    for step in range(args.steps):
        idx = torch.randint(0, n, (args.batch,))
        logit = model(tr[0][idx], norm(tr[1][idx]))
        y, m = tr[2][idx], tr[3][idx].float()
        w = m * torch.where(y > 0, 0.5 / rate, 0.5 / (1 - rate))  # class-balanced per cause
        loss = (F.binary_cross_entropy_with_logits(logit, y, reduction="none") * w).sum() / m.sum().clamp_min(1)
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    with torch.no_grad():
        p = torch.cat([torch.sigmoid(model(va[0][i:i + 512], norm(va[1][i:i + 512]))) for i in range(0, len(va[0]), 512)])
    base = speed_baseline(data["train"]["speed"][:, -1], data["train"]["target"][:, -1],
                          data["train"]["mask"][:, -1], data["val"]["speed"][:, -1])[:, hi]
    out = {"benchmark": "hazard_probe", "tokens": pat, "horizon_s": args.horizon, "steps": args.steps,
           "train_windows": n, "val_windows": len(va[0])}
    wm_p = None
    if wm is not None:
        with torch.no_grad():
            d = data["val"]
            wm_p = torch.cat([torch.sigmoid(wm(d["tokens"][i:i + 256].long(), d["rel_pose"][i:i + 256],
                                               d["speed"][i:i + 256])["disengage"][:, -1, hi].float())
                              for i in range(0, len(d["tokens"]), 256)])
    for c, name in enumerate(CAUSES):
        m = va[3][:, c]
        y = va[2][m, c]
        out[f"positives_{name}"] = int(y.sum())
        out[f"probe_auroc_{name}"] = _auroc_ap(p[m, c], y)[0]
        out[f"speed_baseline_auroc_{name}"] = _auroc_ap(base[m, c], y)[0]
        if wm_p is not None:
            out[f"world_model_auroc_{name}"] = _auroc_ap(wm_p[m, c], y)[0]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
