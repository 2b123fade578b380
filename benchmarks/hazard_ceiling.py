"""How predictable the fleet's 2 s disengagement hazard is from the GROUND-TRUTH state: the ceiling.

    nice -n 19 python benchmarks/hazard_ceiling.py [--segments 80] [--seconds 30]

Drives road-world fleet segments exactly as the fleet stage does (``drive_segment(seed=i, 30 s,
default sim config with the fleet driver behaviours)``, seeds 0..N-1, as ``first_seed: 0``), then
re-drives each seed with a copy of the fleet loop that skips rendering and records, every frame,
``world.metrics()`` and the safety driver's own state (jerk over its window, frames since
(re-)engagement, slow count) and the autopilot's active behaviour episode; the replay must
reproduce the logged ``disengage`` and ``engaged`` arrays exactly (asserted). Labels are the world
model's: ``segment_windows`` at stride 4 (5 Hz), horizon 2 s, its mask, split by segment with
``split_of`` at val_fraction 0.3. Fit on train, score held out, per cause:

- ``speed``: the scoreboard's speed-only logistic baseline (``speed_baseline``);
- ``logistic``: logistic regression (``fit_logistic``) on the state features at the labelled frame;
- ``mlp``: a small torch MLP on the state features at the frame and 1 s earlier;
- ``mlp_oracle``: the same plus the autopilot's hidden behaviour episode (kind one-hot, age) -- not
  observable by any world model, it says how much of the hazard is in the driver's intent.

Also: ``outside_reengage_2s_before_{cause}``, the fraction of held-out events whose state 2 s before
the event already violated the re-engagement rule (``takeover.safe_to_engage``), and the held-out
events by the safety rule that fired.

measured (2026-11-24, ``nice -n 19 python benchmarks/hazard_ceiling.py`` = 80 segments, 32 s on the
2-core machine when idle, ~6 min under load; 40 segments hold out only 10 segments, 6 BRAKE events):
{"benchmark": "hazard_ceiling", "segments": 80, "seconds": 30.0, "horizon_s": 2.0, "stride": 4, "val_fraction": 0.3, "train_frames": 7748, "val_frames": 4172, "val_segments": 28, "positives_steer": 358, "train_positives_steer": 524, "speed_auroc_steer": 0.438, "logistic_auroc_steer": 0.743, "mlp_auroc_steer": 0.687, "mlp_oracle_auroc_steer": 0.698, "events_steer": 40, "event_reasons_steer": {"lat_accel": 21, "lane_offset": 18, "heading": 1}, "outside_reengage_2s_before_steer": 0.128, "positives_brake": 229, "train_positives_brake": 453, "speed_auroc_brake": 0.585, "logistic_auroc_brake": 0.394, "mlp_auroc_brake": 0.481, "mlp_oracle_auroc_brake": 0.505, "events_brake": 24, "event_reasons_brake": {"jerk": 23, "ttc": 1}, "outside_reengage_2s_before_brake": 0.238, "positives_gas": 10, "train_positives_gas": 30, "speed_auroc_gas": 0.994, "logistic_auroc_gas": 0.999, "mlp_auroc_gas": 0.98, "mlp_oracle_auroc_gas": 0.94, "events_gas": 1, "event_reasons_gas": {"slow": 1}, "outside_reengage_2s_before_gas": 0.0, "seconds_taken": 31.6}
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
from drivegpt.data.schema import Cause  # noqa: E402
from drivegpt.sim.roadworld.controllers import Autopilot  # noqa: E402
from drivegpt.sim.roadworld.fleet import drive_segment, make_config  # noqa: E402
from drivegpt.sim.roadworld.takeover import Takeover, safe_to_engage  # noqa: E402
from drivegpt.sim.roadworld.world import World  # noqa: E402
from drivegpt.world_model.metrics import _auroc_ap, fit_logistic, speed_baseline  # noqa: E402

CAUSES = ("steer", "brake", "gas")
KINDS = ("weave", "drift", "lane_change", "brake", "surge", "late_brake", "tailgate")
FEATURES = ("lane_offset", "abs_lane_offset", "heading_error", "abs_heading_error", "lane_offset_rate",
            "heading_error_rate", "speed", "accel", "jerk", "curvature", "road_curvature", "curvature_excess",
            "lat_accel", "abs_lat_accel", "has_lead", "lead_gap", "closing", "inv_ttc", "inv_time_gap",
            "flow_speed", "speed_over_flow", "since_engaged", "slow_count")


def replay(seed: int, seconds: float, cfg_sim=None) -> dict:
    """The fleet loop of ``drive_segment`` without rendering, recording the state every frame."""
    cfg = make_config(cfg_sim, seconds=float(seconds))
    world = World(cfg, seed)
    ap = Autopilot(seed, cfg.autopilot, cfg.fps, behaviours=cfg.autopilot.behaviours.enabled)
    takeover = Takeover(cfg)
    sd = takeover.safety
    T = int(round(seconds * cfg.fps))
    ms, extra, oracle = [], [], []
    engaged = np.zeros(T, bool)
    disengage = np.zeros(T, np.int8)
    reasons = {}
    for t in range(T):
        m = dict(world.metrics())
        if takeover.reengage(m):
            ap.reset()
        b = ap.behaviours
        ep = np.zeros(len(KINDS) + 1)
        for e in (None if b is None else b.lat, None if b is None else b.lon):
            if e is not None:
                ep[KINDS.index(e["kind"])] = 1.0
                ep[-1] = max(ep[-1], min(float(e["age"]), 10.0))
        oracle.append(ep)
        if takeover.engaged:
            engaged[t] = True
            cause = takeover.check(m)
            acc = sd.accels
            jerk = (acc[-1] - acc[0]) / (sd.dt * (len(acc) - 1)) if len(acc) > 1 else 0.0
            extra.append((jerk, sd.count, sd.slow_count))
            if cause != Cause.NONE:
                disengage[t] = int(cause)
                reasons[t] = takeover.reason
                if ap.behaviours is not None:
                    world.lane = ap.behaviours.takeover_lane(world)
        else:
            extra.append((0.0, 0, 0))
        ms.append(m)
        action = ap.act(world) if takeover.engaged else takeover.human_act(world)
        if t < T - 1:
            world.step(action)
    return dict(metrics=ms, extra=np.asarray(extra, np.float64), oracle=np.asarray(oracle), engaged=engaged,
                disengage=disengage, reasons=reasons, fps=cfg.fps)


def state_features(r: dict) -> np.ndarray:
    """[T, len(FEATURES)] from a replay."""
    ms, fps = r["metrics"], r["fps"]
    g = lambda k: np.array([m[k] for m in ms], np.float64)  # noqa: E731
    lo, he, v, k, rk = g("lane_offset"), g("heading_error"), g("speed"), g("curvature"), g("road_curvature")
    gap, lv = g("lead_gap"), g("lead_speed")
    has = np.isfinite(gap)
    gap_c = np.where(has, np.minimum(gap, 150.0), 150.0)
    closing = np.where(has & np.isfinite(lv), v - np.where(np.isfinite(lv), lv, 0.0), 0.0)
    d = lambda x: np.concatenate([[0.0], np.diff(x)]) * fps  # noqa: E731
    flow = g("flow_speed")
    jerk, count, slow = r["extra"].T
    cols = [lo, np.abs(lo), he, np.abs(he), np.clip(d(lo), -5, 5), np.clip(d(he), -2, 2), v, g("accel"), jerk,
            k, rk, k - rk, v * v * k, v * v * np.abs(k), has.astype(float), gap_c, closing,
            np.clip(np.maximum(closing, 0.0) / np.maximum(gap_c, 0.1), 0, 5),
            np.clip(v / np.maximum(gap_c, 0.1), 0, 5), flow, v / np.maximum(flow, 1.0),
            np.minimum(count / fps, 5.0), slow / fps]
    return np.stack(cols, 1)


class MLP(nn.Module):
    def __init__(self, n_in: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                 nn.Linear(width, 3))

    def forward(self, x):
        return self.net(x)


def fit_mlp(x, y, m, steps: int, seed: int) -> MLP:
    torch.manual_seed(seed)
    x, y, m = (torch.as_tensor(a, dtype=torch.float32) for a in (x, y, m))
    rate = ((y * m).sum(0) / m.sum(0).clamp_min(1)).clamp(1e-3, 0.5)
    model = MLP(x.shape[1])
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (512,))
        yy, mm = y[idx], m[idx]
        w = mm * torch.where(yy > 0, 0.5 / rate, 0.5 / (1 - rate))  # class-balanced per cause
        loss = (F.binary_cross_entropy_with_logits(model(x[idx]), yy, reduction="none") * w).sum() / mm.sum().clamp_min(1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def one_segment(job) -> tuple[str, dict, dict]:
    """Drive one seed (fleet + replay); its 5 Hz rows and its events (held-out segments only)."""
    seed, seconds, stride, val_fraction = job
    seg = drive_segment(seed, seconds, None, 16, 32)  # frames unused: the labels do not depend on them
    r = replay(seed, seconds)
    assert np.array_equal(r["disengage"], seg.disengage) and np.array_equal(r["engaged"], seg.engaged), \
        f"seed {seed}: the replay does not reproduce the fleet's disengagements"
    split = split_of(seg.meta["segment_id"], val_fraction)
    feats = state_features(r)
    fps = r["fps"]
    lag = int(round(fps))  # 1 s earlier
    item = dict(meta=seg.meta, rel_pose=seg.rel_pose, speed=seg.speed, engaged=seg.engaged,
                disengage=seg.disengage, times=seg.times, tokens=np.zeros((len(seg), 1, 1), np.int64))
    d = {"x": [], "x1": [], "o": [], "speed": [], "target": [], "mask": []}
    for w in segment_windows(item, 1, stride, key="tokens", horizons=DEFAULT_HORIZONS):
        t = w["start"]
        d["x"].append(feats[t]); d["x1"].append(feats[max(t - lag, 0)]); d["o"].append(r["oracle"][t])
        d["speed"].append(w["speed"][0]); d["target"].append(w["targets"][0]); d["mask"].append(w["mask"][0])
    ev = []  # (cause, reason, outside the re-engagement bounds 2 s before or None)
    if split == "val":
        back = int(round(2.0 * fps))
        for t in np.flatnonzero(seg.disengage):
            out = None if t < back else bool(not safe_to_engage(r["metrics"][t - back]))
            ev.append((CAUSES[int(seg.disengage[t]) - 1], r["reasons"][t], out))
    return split, d, ev


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=80)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--val-fraction", type=float, default=0.3)
    ap.add_argument("--horizon", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    hi = list(DEFAULT_HORIZONS).index(args.horizon)
    rows = {s: {"x": [], "x1": [], "o": [], "speed": [], "target": [], "mask": []} for s in ("train", "val")}
    events = {c: {"n": 0, "outside": 0, "reasons": {}} for c in CAUSES}
    jobs = [(s, args.seconds, args.stride, args.val_fraction)
            for s in range(args.first_seed, args.first_seed + args.segments)]
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(args.workers) as pool:
            results = pool.map(one_segment, jobs, chunksize=1)
    else:
        results = [one_segment(j) for j in jobs]
    for split, d, ev in results:
        for k, v in d.items():
            rows[split][k] += v
        for c, reason, outside in ev:
            e = events[c]
            e["n"] += 1
            e["reasons"][reason] = e["reasons"].get(reason, 0) + 1
            if outside is not None:
                e["n_2s"] = e.get("n_2s", 0) + 1
                e["outside"] += int(outside)
    D = {s: {k: np.asarray(v) for k, v in d.items()} for s, d in rows.items()}
    tr, va = D["train"], D["val"]
    mu, sd = tr["x"].mean(0), tr["x"].std(0) + 1e-6
    z = lambda x: np.clip((x - mu) / sd, -10, 10)  # noqa: E731
    ytr, mtr = tr["target"][:, hi], tr["mask"][:, hi]
    yva, mva = va["target"][:, hi], va["mask"][:, hi]
    scores = {"speed": speed_baseline(tr["speed"], tr["target"], tr["mask"], va["speed"])[:, hi].numpy()}
    lg = np.zeros((len(va["x"]), 3))
    for c in range(3):
        sel = mtr[:, c]
        if ytr[sel, c].min() == ytr[sel, c].max():
            continue
        w = fit_logistic(z(tr["x"][sel]), ytr[sel, c], l2=1.0)
        lg[:, c] = z(va["x"]) @ w[:-1] + w[-1]
    scores["logistic"] = lg
    xin = lambda d: np.concatenate([z(d["x"]), z(d["x1"])], 1)  # noqa: E731
    xor = lambda d: np.concatenate([xin(d), d["o"]], 1)  # noqa: E731
    for k, xf in (("mlp", xin), ("mlp_oracle", xor)):
        model = fit_mlp(xf(tr), ytr, mtr, args.steps, args.seed)
        with torch.no_grad():
            scores[k] = model(torch.as_tensor(xf(va), dtype=torch.float32)).numpy()
    out = {"benchmark": "hazard_ceiling", "segments": args.segments, "seconds": args.seconds,
           "horizon_s": args.horizon, "stride": args.stride, "val_fraction": args.val_fraction,
           "train_frames": int(len(tr["x"])), "val_frames": int(len(va["x"])),
           "val_segments": sum(split_of(f"proc_{i:06d}", args.val_fraction) == "val"
                               for i in range(args.first_seed, args.first_seed + args.segments))}
    for c, name in enumerate(CAUSES):
        m = mva[:, c]
        y = torch.as_tensor(yva[m, c])
        out[f"positives_{name}"] = int(y.sum())
        out[f"train_positives_{name}"] = int(ytr[mtr[:, c], c].sum())
        for k, s in scores.items():
            a = _auroc_ap(torch.as_tensor(s[m, c], dtype=torch.float32), y)[0]
            out[f"{k}_auroc_{name}"] = None if a is None else round(a, 3)
        e = events[name]
        out[f"events_{name}"] = e["n"]
        out[f"event_reasons_{name}"] = e["reasons"]
        out[f"outside_reengage_2s_before_{name}"] = (round(e["outside"] / e["n_2s"], 3) if e.get("n_2s") else None)
    out["seconds_taken"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
