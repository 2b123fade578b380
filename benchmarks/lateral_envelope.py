"""A policy's closed-loop takeovers with a comfort envelope at several values (README "Policy",
*Lateral envelope*, *Jerk envelope*), and the fleet's own envelope beside them.

    python benchmarks/lateral_envelope.py --policy runs/proof_b3/08_bc/policy.pt --values none,2.3,2.4 \
        --fleet runs/proof_b1/01_fleet/shards
    python benchmarks/lateral_envelope.py --policy runs/proof_d2/08_bc/policy.pt --knob max_jerk \
        --values none,4.9 --roads 64 --fleet runs/proof_d2/01_fleet/shards

The same weights drive the closed-loop evaluation's protocol (``rl.evaluate.drive``: the ground-truth
safety driver, the human's takeovers, decisions at the checkpoint's stride) on *development* roads
(``--first-seed`` + i, 3,000,000.. by default: neither the fleet's seeds from 0 nor the report's
held-out ones from 1,000,000), once per value of ``rl.policy.max_lat_accel`` (``--knob
max_jerk``: of ``rl.policy.max_jerk``; ``none``: no envelope, the baseline). ``--fleet SHARDS``:
the 99th / 99.9th percentiles of the lateral acceleration and of the jerk of the fleet's kept
engaged frames (``data.inspect.FleetStats``), the envelope the safety drivers accepted.

Prints ONE JSON line: per value the closed-loop figures (per 100 km, by cause, the rules that fired,
speed / flow, lateral-accel percentiles, lane error) and the fleet's percentiles.

measured (2026-12-07, the 2-core AVX2 EPYC, 32 roads x 120 s, 2 workers, 3 min 29 s for three
values), the proof's desired-speed BC (`runs/proof_b3/08_bc`, trained without the envelope): none
385 per 100 km (STEER 253), 2.3 m/s^2 234 (STEER 100), 2.4 217 (STEER 79); proof_b1's fleet: p99
2.06, p99.9 2.38.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("km", "per_100km", "STEER_per_100km", "BRAKE_per_100km", "GAS_per_100km", "speed_ratio",
        "lat_accel_p99", "jerk_p95", "jerk_p99", "lane_error_p95")
KNOBS = ("max_lat_accel", "max_jerk")


def parse_values(text: str) -> list[float | None]:
    out = []
    for v in text.split(","):
        v = v.strip()
        if v.lower() in ("none", "null", "off"):
            out.append(None)
            continue
        try:
            x = float(v)
        except ValueError:
            raise SystemExit(f"--values: {v!r} is not a number or 'none'") from None
        if not x > 0:
            raise SystemExit(f"--values: {v!r} must be > 0 (m/s^2) or 'none'")
        out.append(x)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="policy checkpoint (policy.pt or its run dir)")
    ap.add_argument("--knob", default="max_lat_accel", choices=KNOBS,
                    help="the envelope to vary: max_lat_accel (m/s^2) or max_jerk (m/s^3)")
    ap.add_argument("--values", default="none,2.4", help="the knob's values, 'none' = no envelope")
    ap.add_argument("--experiment", default="proof", help="the preset whose road world drives (sizes only)")
    ap.add_argument("--roads", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--first-seed", type=int, default=3_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fleet", default=None, help="fleet shards: print their kept engaged lateral-accel percentiles")
    a = ap.parse_args(argv)
    values = parse_values(a.values)

    from drivegpt.config import compose
    from drivegpt.rl.checkpoint import load_policy
    from drivegpt.rl.evaluate import drive
    from drivegpt.rl.metrics import closed_loop_metrics
    from drivegpt.stages.common import bind_fps

    cfg = compose("eval_policy", [f"experiment={a.experiment}", "run_dir=unused"])
    bind_fps(cfg)
    base = load_policy(a.policy).eval()
    stride = int(base.checkpoint_meta.get("stride", cfg.data.stride))
    seeds = list(range(a.first_seed, a.first_seed + a.roads))
    out: dict = {"checkpoint": str(a.policy), "knob": a.knob, "roads": a.roads, "seconds": a.seconds,
                 "first_seed": a.first_seed, "values": {}}
    for v in values:
        pol = copy.deepcopy(base)
        setattr(pol.cfg, a.knob, v)
        t0 = time.perf_counter()
        m = closed_loop_metrics(drive("policy", seeds, a.seconds, cfg.sim, pol, stride=stride, workers=a.workers))
        row = {k: round(float(m[k]), 3) for k in KEYS}
        row["rules"] = {k[5:]: int(x) for k, x in m.items() if k.startswith("rule_")}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        out["values"]["none" if v is None else f"{v:g}"] = row
        print(f"{a.knob}={v}: {row}", file=sys.stderr)
    if a.fleet:
        from drivegpt.data.inspect import fleet_summary
        from drivegpt.data.shard_reading import iter_samples

        s = fleet_summary(iter_samples(a.fleet, frames=False))
        out["fleet"] = {"shards": a.fleet, **{k: s[k] for k in ("kept_lat_accel_p99", "kept_lat_accel_p999",
                                                                 "kept_jerk_p99", "kept_jerk_p999")}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
