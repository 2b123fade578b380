"""Where does the policy drive slowly, and does the fleet ever? Speed over flow, fleet vs policy.

    python benchmarks/speed_bands.py --policy runs/cruise/08_bc/policy.pt --experiment proof
    python benchmarks/speed_bands.py --fleet-only --roads 120

Covariate shift, measured against the road world's ground truth (the flow speed: the road's
speed profile, capped by a lead within 60 m, as the GAS rule reads it). Two drivers on
development roads (``--first-seed`` + i: neither the fleet's seeds from 0 nor the closed-loop
evaluation's from 1,000,000):

- the fleet: the autopilot with the fleet's driver behaviours under the takeover protocol, as
  ``drive_segment`` drives it with the default road world (``--fleet-seconds`` per road, no
  rendering). Its engaged frames, and those BC keeps (no disengagement of any cause within
  ``--exclude-s``, as ``rl.bc.exclude_before_disengage_s``, and not censored there);
- the policy (``--policy``): the closed-loop evaluation's own scenarios and protocol
  (``rl.evaluate._Scenario``), ``--seconds`` per road, deciding at its checkpoint's stride.

Prints ONE JSON line: per driver and band of speed / flow the share of engaged frames and
their mean accel (m/s^2), the mean speed / flow, and for the policy its takeover rules and how
many GAS takeovers came within 3.5 s of a handback by the human (the re-engagement cascade; the
rule needs 3 s of slow driving, so 2.95 s after a handback is the earliest it can fire).

measured (2026-12-06, this 2-core AVX2 CPU, 78 s): the fleet (120 roads x 30 s) spends 1.9% of
its engaged frames under 0.6x the flow and 6.4% at 0.6-0.8x, where it accelerates +0.14 / +0.81
m/s^2 (+0.09 / +0.85 in the windows BC keeps); the proof BC with the set speed
(`runs/cruise/08_bc`, 16 roads x 120 s) spends 16% / 43% there at -0.20 / -0.15 m/s^2, and 22 of
its 81 GAS takeovers come within 3.5 s of a handback (README "Policy", *Speed recovery*).

``--shadow-roads N``: the evaluation's autopilot drives N dev roads (``--shadow-first-seed`` + i,
``--shadow-seconds`` each) and at every decision on an open road the policy is asked for its accel
on the same observation, also with the speed input x0.6 and x1.4: does its accel read the speed?
measured (2026-12-07, AVX2 CPU, 8 roads x 60 s, 641 open-road decisions; README "Policy",
*Desired speed*): the proof's accel-head BC (`runs/proof_b1/08_bc`) answers -0.26 to -0.34 m/s^2 in
every band, within 0.03 of that with the speed scaled, where the autopilot commands +0.48 / +0.51
below 0.6 / at 0.6-0.8 of the flow; the speed-head BC (`runs/proof_b3/08_bc`) answers +1.44 below
0.6, and +2.95 / -0.42 with the speed x0.6 / x1.4.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDS = ((0.0, 0.6), (0.6, 0.8), (0.8, 0.95), (0.95, 10.0))


def bands(speed: np.ndarray, flow: np.ndarray, accel: np.ndarray) -> dict:
    """Share of frames and mean accel per band of speed / flow (flow floored at 1 m/s)."""
    r = speed / np.maximum(flow, 1.0)
    out = {"frames": int(r.size), "speed_over_flow": float(speed.mean() / max(flow.mean(), 1e-6)) if r.size else None}
    for lo, hi in BANDS:
        sel = (r >= lo) & (r < hi)
        out[f"{lo:g}-{hi:g}"] = {"share": float(sel.mean()) if r.size else 0.0,
                                 "mean_accel": float(accel[sel].mean()) if sel.any() else None}
    return out


def fleet(roads: int, first_seed: int, seconds: float, exclude_s: float) -> dict:
    """The fleet's autopilot (with its behaviours) under the takeover protocol, no rendering."""
    from drivegpt.data.labels import disengagement_targets
    from drivegpt.data.schema import Cause
    from drivegpt.sim.roadworld.controllers import Autopilot
    from drivegpt.sim.roadworld.fleet import make_config
    from drivegpt.sim.roadworld.takeover import Takeover
    from drivegpt.sim.roadworld.world import World

    cfg = make_config(None, seconds=float(seconds))
    rows, keep = [], []
    for seed in range(first_seed, first_seed + roads):
        world = World(cfg, seed)
        ap = Autopilot(seed, cfg.autopilot, cfg.fps, behaviours=cfg.autopilot.behaviours.enabled)
        takeover = Takeover(cfg)
        n = int(round(seconds * cfg.fps))
        rec = np.zeros((n, 3))
        engaged, dis = np.zeros(n, bool), np.zeros(n, np.int8)
        for t in range(n):
            m = world.metrics()
            cause = takeover.turn(m, ap, world)
            if cause is not None:
                engaged[t] = True
                if cause != Cause.NONE:
                    dis[t] = int(cause)
            rec[t] = (m["speed"], m["flow_speed"], m["accel"])
            world.step(ap.act(world) if takeover.engaged else takeover.human_act(world))
        times = np.arange(n) / cfg.fps
        tgt, mask = disengagement_targets(dis, engaged, times, (exclude_s,))
        bad = (tgt[:, 0] > 0).any(1) | ~mask[:, 0].all(1)
        rows.append(np.c_[rec, engaged])
        keep.append(engaged & ~bad)
    rec = np.concatenate(rows)
    eng, kept = rec[:, 3] > 0, np.concatenate(keep)
    return {"roads": roads, "seconds": seconds,
            "engaged": bands(*rec[eng, :3].T),
            "bc_kept": bands(*rec[kept, :3].T),
            "human": bands(*rec[~eng, :3].T)}


def _setup(path: str, experiment: str):
    """(eval_policy config, the policy in eval mode, its K, its decision stride), one torch thread."""
    import torch

    from drivegpt.config import compose
    from drivegpt.rl.checkpoint import load_policy
    from drivegpt.stages.common import bind_fps

    torch.set_num_threads(1)
    cfg = compose("eval_policy", [f"experiment={experiment}", "run_dir=unused"])
    bind_fps(cfg)
    pol = load_policy(path).eval()
    return cfg, pol, pol.obs_shape[0], int(pol.checkpoint_meta.get("stride", cfg.data.stride))


def policy_drive(path: str, experiment: str, roads: int, first_seed: int, seconds: float) -> dict:
    """The policy in the closed-loop evaluation's scenarios, logging speed, flow and accel."""
    import torch

    from drivegpt.rl.evaluate import _Scenario

    cfg, pol, k, stride = _setup(path, experiment)
    scen = [_Scenario(first_seed + i, seconds, cfg.sim, "policy") for i in range(roads)]
    held = np.zeros((roads, 2))
    rec, handed, gas_after = [], [None] * roads, []  # the frame each road was last handed back
    reasons: Counter = Counter()
    for t in range(scen[0].steps):
        for i, s in enumerate(scen):
            was = s.on
            s.check()
            if s.just_engaged:
                handed[i] = t
            m = s.world.metrics()
            if was and not s.on:
                reasons[s.takeover.reason] += 1
                if s.takeover.reason == "slow":
                    gas_after.append(np.inf if handed[i] is None else (t - handed[i]) / s.cfg.fps)
            if s.on:
                rec.append((m["speed"], m["flow_speed"], m["accel"]))
        if t % stride == 0:
            for s in scen:
                s.observe(k)
        need = [i for i, s in enumerate(scen) if s.on and (t % stride == 0 or s.just_engaged)]
        if need:
            frames = torch.as_tensor(np.stack([scen[i].history for i in need]))
            speed = torch.as_tensor([float(scen[i].world.state[0]) for i in need], dtype=torch.float32)
            cruise = torch.as_tensor([scen[i].cruise for i in need], dtype=torch.float32)
            with torch.no_grad():
                held[need] = pol.act(frames, speed, deterministic=True, cruise=cruise).numpy()
        for i, s in enumerate(scen):
            s.act(held[i])
    rec = np.asarray(rec)
    gas = np.asarray(gas_after)
    return {"checkpoint": path, "roads": roads, "seconds": seconds, "engaged": bands(*rec.T),
            "rules": dict(reasons), "gas": int(gas.size),
            "gas_within_3_5s_of_handback": int((gas <= 3.5).sum())}


def shadow(path: str, experiment: str, roads: int, first_seed: int, seconds: float) -> dict:
    """Does the policy's accel read the speed? The evaluation's autopilot drives (its own scenarios
    and protocol); at every decision the policy is asked for its accel on the same observation,
    and again with the speed input scaled by 0.6 and by 1.4. Per band of speed / flow, open road
    only (no lead within 60 m): the autopilot's accel command and the policy's three answers."""
    import torch

    from drivegpt.rl.evaluate import _Scenario
    from drivegpt.sim.vehicle import ACTION_SCALE

    cfg, pol, k, stride = _setup(path, experiment)
    rows = []
    for i in range(roads):
        s = _Scenario(first_seed + i, seconds, cfg.sim, "autopilot")
        for t in range(s.steps):
            s.check()
            if t % stride == 0:
                s.observe(k)
                m = s.world.metrics()
                if s.on and m["lead_gap"] > 60.0:
                    frames = torch.as_tensor(s.history[None]).expand(3, *s.history.shape)
                    v = float(s.world.state[0])
                    with torch.no_grad():
                        a = pol.act(frames, torch.tensor([v, 0.6 * v, 1.4 * v]), deterministic=True,
                                    cruise=torch.full((3,), s.cruise))[:, 1].numpy() * ACTION_SCALE[1]
                    ctrl = float(copy_act(s)[1]) * ACTION_SCALE[1]
                    rows.append((m["speed"] / max(m["flow_speed"], 1.0), ctrl, *a))
            s.act(None)
    r = np.asarray(rows)
    out = {"checkpoint": path, "roads": roads, "seconds": seconds, "decisions": int(len(r))}
    for lo, hi in BANDS:
        sel = (r[:, 0] >= lo) & (r[:, 0] < hi)
        out[f"{lo:g}-{hi:g}"] = None if not sel.any() else {
            "n": int(sel.sum()), "autopilot": float(r[sel, 1].mean()), "policy": float(r[sel, 2].mean()),
            "policy_speed_x0.6": float(r[sel, 3].mean()), "policy_speed_x1.4": float(r[sel, 4].mean())}
    return out


def copy_act(s) -> np.ndarray:
    """The autopilot's command at this frame without advancing its state (its noise and delay)."""
    import copy

    return copy.deepcopy(s.ctrl).act(s.world)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="policy checkpoint (policy.pt); omit with --fleet-only")
    ap.add_argument("--experiment", default="proof", help="preset whose road world the policy drives")
    ap.add_argument("--fleet-only", action="store_true")
    ap.add_argument("--roads", type=int, default=120, help="fleet roads")
    ap.add_argument("--policy-roads", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=200, help="fleet roads' first seed")
    ap.add_argument("--policy-first-seed", type=int, default=3000000)
    ap.add_argument("--fleet-seconds", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=120.0, help="per policy road")
    ap.add_argument("--exclude-s", type=float, default=2.0, help="rl.bc.exclude_before_disengage_s")
    ap.add_argument("--shadow-roads", type=int, default=0,
                    help="also ask the policy for its accel on autopilot-driven roads (0: skip)")
    ap.add_argument("--shadow-seconds", type=float, default=60.0)
    ap.add_argument("--shadow-first-seed", type=int, default=2000000)
    a = ap.parse_args(argv)
    if not a.fleet_only and not a.policy:
        ap.error("give --policy CKPT or --fleet-only")
    t0 = time.perf_counter()
    out = {"bands": [f"{lo:g}-{hi:g}" for lo, hi in BANDS],
           "fleet": fleet(a.roads, a.first_seed, a.fleet_seconds, a.exclude_s)}
    if a.policy:
        out["policy"] = policy_drive(a.policy, a.experiment, a.policy_roads, a.policy_first_seed, a.seconds)
        if a.shadow_roads:
            out["shadow"] = shadow(a.policy, a.experiment, a.shadow_roads, a.shadow_first_seed, a.shadow_seconds)
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
