"""Road-world rendering speed: frames/s per core at 128x256 and 32x64 (target >= 1000 at
128x256), with and without the lane-marking mask, plus the full env step and a fleet segment.

    python benchmarks/roadworld.py [--frames 1000] [--segment-seconds 60] [--fleet-segments 24]

Prints ONE JSON line. "per core" = frames / CPU seconds of this (single-threaded) process,
so it is not inflated by other load on the machine; wall-clock figures are reported too.
The baseline is the 1000 frames/s target: ``ratio_to_target`` = fps_per_core / 1000.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from drivegpt.sim.roadworld import (HumanDriver, RoadWorldConfig, RoadWorldEnv, World,  # noqa: E402
                          drive_segment, fleet_stats)

TARGET_FPS = 1000.0


def _timed(fn, n):
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return n / max(time.process_time() - c0, 1e-9), n / max(time.perf_counter() - w0, 1e-9)


def render_fps(height, width, n, mask, seeds=(0, 1, 2, 3)):
    """Frames/s rendering along real drives (a human drives; frames rendered every step)."""
    cpu, wall = [], []
    for seed in seeds:
        world = World(RoadWorldConfig(), seed, height, width)
        human = HumanDriver()
        poses = []
        for _ in range(n // len(seeds)):  # record a drive, then time rendering alone
            world.step(human.act(world))
            poses.append((world.pose.copy(), world.s, world.traffic_array()))
        c, w = _timed(lambda i: world.renderer.render(poses[i][0], poses[i][1], poses[i][2], mask=mask),
                      len(poses))
        cpu.append(c)
        wall.append(w)
    return float(np.mean(cpu)), float(np.mean(wall))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--segment-seconds", type=float, default=60.0)
    ap.add_argument("--fleet-segments", type=int, default=0,
                    help="also drive this many default segments (seeds 0..N-1, 64x128) and report "
                         "autopilot disengagements per 100 km by cause")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    out = {"benchmark": "roadworld", "target_fps": TARGET_FPS}
    for h, w in ((128, 256), (32, 64)):
        for mask in (False, True):
            cpu, wall = render_fps(h, w, args.frames, mask)
            key = f"render_{h}x{w}" + ("_mask" if mask else "")
            out[f"{key}_fps_per_core"] = round(cpu, 1)
            out[f"{key}_fps_wall"] = round(wall, 1)
    out["ratio_to_target_128x256"] = round(out["render_128x256_fps_per_core"] / TARGET_FPS, 3)
    env = RoadWorldEnv(height=128, width=256, seconds=600)
    env.reset(seed=0)
    human = HumanDriver()
    cpu, wall = _timed(lambda i: env.step(human.act(env)), args.frames // 2)
    out["env_step_128x256_per_s_per_core"] = round(cpu, 1)
    c0, w0 = time.process_time(), time.perf_counter()
    seg = drive_segment(0, args.segment_seconds, None, 128, 256)
    out["drive_segment_s"] = args.segment_seconds
    out["drive_segment_cpu_seconds"] = round(time.process_time() - c0, 2)
    out["drive_segment_wall_seconds"] = round(time.perf_counter() - w0, 2)
    out["drive_segment_frames"] = len(seg)
    if args.fleet_segments:
        stats = fleet_stats(drive_segment(i, args.segment_seconds, None, 64, 128)
                            for i in range(args.fleet_segments))
        out["fleet"] = {k: (round(v, 3) if isinstance(v, float) else
                            {c: round(x, 1) for c, x in v.items()} if isinstance(v, dict) else v)
                        for k, v in stats.items()}
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    out["cpu_count"] = os.cpu_count()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
