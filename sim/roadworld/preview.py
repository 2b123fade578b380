"""Look at a road-world segment: contact sheet PNG, WebM video and GIF with a HUD.

    python -m drivegpt.sim.roadworld.preview --seed 3 --seconds 20 --out runs/preview [--height 128 --width 256]

HUD: speed, engaged (green) / human driving (orange), the disengagement cause and rule on
the frame it fires; lane-marking mask pixels tinted magenta in the contact sheet.
Files are written under a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np

from drivegpt.data.schema import Cause, Segment
from drivegpt.data.video import encode_webm

from .fleet import drive_segment


def hud(seg: Segment, t: int) -> np.ndarray:
    """Frame t (RGB) with a status bar; upscaled to at least 256 px wide for legibility."""
    img = seg.frames[t]
    scale = max(1, 256 // img.shape[1])
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    bar = np.zeros((14, img.shape[1], 3), np.uint8)
    bar[:] = (40, 160, 60) if seg.engaged[t] else (220, 130, 30)
    text = f"{seg.times[t]:5.2f}s {seg.speed[t] * 3.6:5.1f} km/h {'AP' if seg.engaged[t] else 'HUMAN'}"
    if seg.disengage[t]:
        bar[:] = (200, 30, 30)
        rule = next((e["reason"] for e in seg.meta.get("disengagements", []) if e["frame"] == t), "")
        text += f" {Cause(int(seg.disengage[t])).name}:{rule}"
    cv2.putText(bar, text, (3, 10), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], 0)


def contact_sheet(seg: Segment, n: int = 12, cols: int = 3) -> np.ndarray:
    """n frames spread over the segment (every disengagement frame included), masks tinted."""
    T = len(seg)
    idx = sorted(set(np.linspace(0, T - 1, n).round().astype(int).tolist())
                 | set(np.flatnonzero(seg.disengage).tolist()))
    tiles = []
    for t in idx:
        tile = hud(seg, t)
        if "lane_mask" in seg.extras:
            size = (tile.shape[1], tile.shape[0] - 14)  # (w, h) of the image under the bar
            m = cv2.resize(seg.extras["lane_mask"][t].astype(np.uint8), size,
                           interpolation=cv2.INTER_NEAREST).astype(bool)
            body = tile[14:]
            body[m] = (0.5 * body[m] + 0.5 * np.array([255, 0, 255])).astype(np.uint8)
        tiles.append(tile)
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + cols], 1) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, 0)


def _atomic(path: Path, write):
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_preview(seg: Segment, out: str | os.PathLike) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sid = seg.segment_id
    paths = dict(png=out / f"{sid}_sheet.png", webm=out / f"{sid}.webm", gif=out / f"{sid}.gif")
    _atomic(paths["png"], lambda p: cv2.imwrite(str(p), cv2.cvtColor(contact_sheet(seg), cv2.COLOR_RGB2BGR)))
    frames = [hud(seg, t) for t in range(len(seg))]

    _atomic(paths["webm"], lambda p: p.write_bytes(encode_webm(np.stack(frames), float(seg.meta["fps"]))))

    def gif(p):
        from PIL import Image

        ims = [Image.fromarray(f) for f in frames[::2]]  # 10 Hz
        ims[0].save(p, format="GIF", save_all=True, append_images=ims[1:], duration=100, loop=0)

    _atomic(paths["gif"], gif)
    return {k: str(v) for k, v in paths.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Drive one road-world segment and write previews.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--quality", type=float, default=None, help="fix the autopilot quality (0 poor .. 1 good)")
    ap.add_argument("--out", default="runs/roadworld_preview")
    args = ap.parse_args(argv)
    seg = drive_segment(args.seed, args.seconds, None, args.height, args.width, quality=args.quality)
    paths = write_preview(seg, args.out)
    for e in seg.meta["disengagements"]:
        print(f"  frame {e['frame']}: {e['cause']} ({e['reason']})")
    print("\n".join(paths.values()))
    return paths


if __name__ == "__main__":
    main()
