"""Synthetic-fleet event budget: disengagements per cause per km, per held-out split, and how
much the logged motion departs from the road (README "Road world", fleet drivers).

    python benchmarks/fleet_events.py [--segments 32] [--seconds 30] [--val-fraction 0.1]
        [--height 64 --width 128] [--first-seed 0] [--set autopilot.behaviours.enabled=false]

Drives segments ``first_seed .. first_seed + segments - 1`` exactly as ``drivegpt fleet
generate`` does (``drive_segment`` with the default sim config plus ``--set`` overrides), in
this one single-threaded process, and prints ONE JSON line:

- ``splits``: per split (``data.loaders.split_of(segment_id, val_fraction)``) the segments,
  km, disengagements by cause and per km;
- ``yaw_deviation``: the spread of (yaw rate - road curvature x speed) [rad/s] over all
  frames (std and |.| quantiles), the part of the ego's yaw that the road does not explain;
  also the lane offset std [m] and the longitudinal accel std [m/s^2];
- ``seconds_per_segment``: wall and CPU seconds per segment (rendering included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from drivegpt.data.loaders import split_of
from drivegpt.data.schema import CAUSE_NAMES
from drivegpt.sim.roadworld import drive_segment
from drivegpt.sim.roadworld.fleet import road_deviation


def yaw_deviation(seg) -> tuple[np.ndarray, np.ndarray]:
    dev, _, offset = road_deviation(seg)
    return dev, offset


def parse_set(items) -> dict:
    out: dict = {}
    for item in items or []:
        key, value = item.split("=", 1)
        node = out
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = json.loads(value) if value not in ("true", "false") else value == "true"
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segments", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="sim override, e.g. autopilot.quality=[2,2]")
    args = ap.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    sim = parse_set(args.set)
    splits = {k: dict(segments=0, km=0.0, **{c: 0 for c in CAUSE_NAMES}) for k in ("train", "val")}
    devs, offs, accs, engaged = [], [], [], []
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(args.first_seed, args.first_seed + args.segments):
        seg = drive_segment(i, args.seconds, sim or None, args.height, args.width)
        sp = splits[split_of(seg.meta["segment_id"], args.val_fraction)]
        sp["segments"] += 1
        sp["km"] += float(seg.speed.astype(np.float64).sum()) / float(seg.meta["fps"]) / 1000.0
        for k, c in enumerate(CAUSE_NAMES):
            sp[c] += int((seg.disengage == k + 1).sum())
        d, o = yaw_deviation(seg)
        devs.append(d); offs.append(o); engaged.append(seg.engaged)
        accs.append(np.diff(seg.speed.astype(np.float64)) * float(seg.meta["fps"]))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    for sp in splits.values():
        sp["per_km"] = {c: (sp[c] / sp["km"] if sp["km"] > 0 else None) for c in CAUSE_NAMES}
    dev, off, acc = (np.concatenate(x) for x in (devs, offs, accs))
    a = np.abs(dev)
    total_km = sum(sp["km"] for sp in splits.values())
    out = dict(
        segments=args.segments, seconds=args.seconds, val_fraction=args.val_fraction,
        height=args.height, width=args.width, first_seed=args.first_seed, sim=sim,
        splits=splits,
        per_km={c: sum(sp[c] for sp in splits.values()) / total_km for c in CAUSE_NAMES},
        engaged_fraction=float(np.concatenate(engaged).mean()),
        yaw_deviation=dict(std=float(dev.std()), p50_abs=float(np.quantile(a, 0.5)),
                           p90_abs=float(np.quantile(a, 0.9)), p99_abs=float(np.quantile(a, 0.99))),
        lane_offset_std=float(off.std()), accel_std=float(acc.std()),
        seconds_per_segment=dict(wall=wall / args.segments, cpu=cpu / args.segments),
    )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
