"""Does the cruise set speed say when the fleet accelerates? Accel against the gap to the set
speed, over the frames of fleet shards (README "Policy", *Cruise set speed*).

    python benchmarks/cruise_gap.py --shards 'runs/cruise/01_fleet/shards/*.tar'

Reads each segment's ``speed`` and ``engaged`` arrays and ``meta.cruise_speed`` straight from
the tar members (no video is decoded), takes the accel over ``--interval`` seconds (the
policy's decision interval: 0.2 s at 20 Hz / stride 4) and prints ONE JSON line: per driver
(engaged autopilot, human takeover) the frames, their mean accel, and for each band of
gap = set speed - speed (m/s) the share of frames and the mean / 90th percentile accel.
Segments without a logged set speed are counted and left out.

measured (2026-12-06, the proof's 160-segment fleet, `runs/cruise`): 56.5% of the engaged
frames are more than 10 m/s below their set speed, and the mean accel is -0.08 to -0.30 m/s^2
in every band from 0 to 40 m/s: the set speed alone does not say when to speed up.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

BANDS = ((-40.0, 0.0), (0.0, 3.0), (3.0, 6.0), (6.0, 10.0), (10.0, 40.0))


def segments(urls):
    """(speed [T], engaged [T], meta) of every segment in the tar shards ``urls``."""
    for url in urls:
        with tarfile.open(url) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for key in sorted({n.split(".", 1)[0] for n in members}):
                need = [f"{key}.speed.npy", f"{key}.engaged.npy", f"{key}.meta.json"]
                missing = [n for n in need if n not in members]
                if missing:
                    raise ValueError(f"{url}: sample {key!r} lacks {missing}")
                speed = np.load(io.BytesIO(tar.extractfile(members[need[0]]).read()))
                engaged = np.load(io.BytesIO(tar.extractfile(members[need[1]]).read()))
                meta = json.load(tar.extractfile(members[need[2]]))
                yield speed.astype(np.float64), engaged.astype(bool), meta


def gap_table(urls, interval: float = 0.2) -> dict:
    rows, no_cruise = [], 0
    for speed, engaged, meta in segments(urls):
        c = meta.get("cruise_speed")
        if c is None:
            no_cruise += 1
            continue
        n = max(1, int(round(interval * float(meta["fps"]))))
        if len(speed) <= n:
            continue
        acc = (speed[n:] - speed[:-n]) / (n / float(meta["fps"]))
        rows.append(np.stack([float(c) - speed[:-n], acc, engaged[:-n]], 1))
    if not rows:
        raise ValueError(f"no segment with meta.cruise_speed in {len(urls)} shard(s)")
    d = np.concatenate(rows)
    out = {"segments_without_cruise_speed": no_cruise, "interval_s": interval}
    for name, sel in (("engaged", d[:, 2] > 0), ("human", d[:, 2] == 0)):
        part = {"frames": int(sel.sum()), "mean_accel": float(d[sel, 1].mean()) if sel.any() else None, "bands": []}
        for lo, hi in BANDS:
            s = sel & (d[:, 0] >= lo) & (d[:, 0] < hi)
            if s.any():
                part["bands"].append({"gap_m_s": [lo, hi], "share": float(s.sum() / sel.sum()),
                                      "mean_accel": float(d[s, 1].mean()),
                                      "p90_accel": float(np.percentile(d[s, 1], 90))})
        out[name] = part
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True, help="tar shards (glob or directory)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds the accel is taken over")
    a = ap.parse_args(argv)
    p = Path(a.shards)
    urls = sorted(p.glob("*.tar")) if p.is_dir() else sorted(Path().glob(a.shards))
    if not urls:
        print(f"cruise_gap: no tar shards at {a.shards!r}", file=sys.stderr)
        return 2
    print(json.dumps(gap_table([str(u) for u in urls], a.interval)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
