"""Loader throughput and storage cost; prints ONE JSON line.

    python benchmarks/loader.py                 # frames/s from shards (2 workers) vs decoding
                                                # the source video directly, bytes/frame on disk
    python benchmarks/loader.py --codecs        # the frame-codec table (bytes/frame, encode and
                                                # decode frames/s, PSNR) that chose data.video's codec

Frames come from the procedural road world (sim.roadworld, driven along a lane centre) at
128x256; if it is not installed, from the synthetic road-like frames of the tests.
Baseline ("source video"): the same frames as one OpenCV mp4v file per segment, decoded
with cv2.VideoCapture, which is how a raw fleet video is read without shards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def road_world_frames(n: int, h: int, w: int, seed: int) -> tuple[np.ndarray, str]:
    """uint8 [n,h,w,3]: a drive along a lane centre of a road-world road (traffic moving)."""
    try:
        from drivegpt.sim.roadworld.config import RoadWorldConfig
        from drivegpt.sim.roadworld.world import World
    except ImportError:
        from tests.synth_fleet import road_frames

        return road_frames(n, h, w, seed), "synthetic"
    cfg = RoadWorldConfig(seconds=n / 20 + 5)
    world = World(cfg, seed, h, w)
    road, s, v = world.road, world.s, float(world.state[0])
    lat = float(road.lane_center(world.lane))
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        s += v * world.dt
        x, y = road.point(s, lat)
        world.set_pose(float(x), float(y), float(road.at(s)[2]), s_hint=s)
        if world.traffic is not None:
            world.traffic.step(world.dt, world.s, world.lane, v, world.params.length)
        img = world.render()
        out[i] = img[0] if isinstance(img, tuple) else img
    return out, "roadworld"


def _cv_write(path: str, frames: np.ndarray, fourcc: str = "mp4v", fps: float = 20.0):
    import cv2

    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (frames.shape[2], frames.shape[1]))
    if not w.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc}")
    for f in frames:
        w.write(f[:, :, ::-1])
    w.release()


def _cv_read(path: str) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(path)
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(out)


def codec_table(frames: np.ndarray, reps: int = 3) -> list[dict]:
    """Measure every candidate on ``frames``: bytes/frame, encode/decode frames/s, PSNR."""
    import cv2

    from drivegpt.data.video import decode_frames, encode_frames, psnr

    t = len(frames)

    def jpeg_like(ext, params):
        def enc(fr):
            return [cv2.imencode(ext, f[:, :, ::-1], params)[1].tobytes() for f in fr]

        def dec(parts):
            return np.stack([cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for p in parts])

        return enc, dec, lambda parts: sum(len(p) + 8 for p in parts)

    def opencv(fourcc, ext):
        def enc(fr):
            with tempfile.TemporaryDirectory() as d:
                _cv_write(os.path.join(d, "v" + ext), fr, fourcc)
                return Path(d, "v" + ext).read_bytes()

        def dec(blob):
            with tempfile.TemporaryDirectory() as d:
                Path(d, "v" + ext).write_bytes(blob)
                return _cv_read(os.path.join(d, "v" + ext))

        return enc, dec, len

    def pyav(codec, fmt, opts, pix):
        from drivegpt.data.video import _encode_h264

        return (lambda fr: _encode_h264(fr, 20, codec=codec, fmt=fmt, options=opts, pix_fmt=pix),
                lambda b: decode_frames(b, "mp4"), len)

    cands = {
        "jpgs q95 4:4:4 (data.video 'jpgs')": (lambda fr: encode_frames(fr, "jpgs"),
                                               lambda b: decode_frames(b, "jpgs"), len),
        "jpeg q90 4:2:0 per frame": jpeg_like(".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
        "webp q90 per frame": jpeg_like(".webp", [cv2.IMWRITE_WEBP_QUALITY, 90]),
        "png per frame (lossless)": jpeg_like(".png", [cv2.IMWRITE_PNG_COMPRESSION, 3]),
        "opencv mp4v": opencv("mp4v", ".mp4"),
        "opencv MJPG avi": opencv("MJPG", ".avi"),
        "opencv FFV1 mkv (lossless)": opencv("FFV1", ".mkv"),
        "pyav h264 crf18 4:2:0": pyav("libx264", "mp4", {"crf": "18", "preset": "fast", "threads": "1"}, "yuv420p"),
        "pyav h264 crf23 4:4:4": pyav("libx264", "mp4", {"crf": "23", "preset": "fast", "threads": "1"}, "yuv444p"),
        "pyav h264 crf18 4:4:4 preset fast": pyav("libx264", "mp4", {"crf": "18", "preset": "fast", "threads": "1"}, "yuv444p"),
        "pyav h264 crf18 4:4:4 preset veryfast": pyav("libx264", "mp4", {"crf": "18", "preset": "veryfast", "threads": "1"}, "yuv444p"),
        "pyav h264 crf18 4:4:4 preset superfast": pyav("libx264", "mp4", {"crf": "18", "preset": "superfast", "threads": "1"}, "yuv444p"),
        "pyav h264 crf18 4:4:4 ultrafast (data.video 'mp4')": (lambda fr: encode_frames(fr, "mp4"),
                                                              lambda b: decode_frames(b, "mp4"), len),
        "pyav vp9 crf30 webm": pyav("libvpx-vp9", "webm", {"crf": "30", "b": "0"}, "yuv420p"),
    }
    rows = []
    for name, (enc, dec, size) in cands.items():
        try:
            te = min(_timed(lambda: enc(frames)) for _ in range(reps))
            blob = enc(frames)
            td = min(_timed(lambda: dec(blob)) for _ in range(reps))
            out = dec(blob)
            rows.append({"codec": name, "bytes_per_frame": round(size(blob) / t),
                         "encode_fps": round(t / te), "decode_fps": round(t / td),
                         "psnr_db": round(psnr(frames, out), 2)})
        except Exception as e:  # a codec missing from this build
            rows.append({"codec": name, "error": f"{type(e).__name__}: {e}"[:120]})
    return rows


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def loader_benchmark(segments: int, frames_per_segment: int, h: int, w: int, workers: int) -> dict:
    from drivegpt.data.loaders import frame_dataset, make_loader
    from drivegpt.data.schema import Segment
    from drivegpt.data.shards import write_shards

    tmp = Path(tempfile.mkdtemp(prefix="drivegpt-loader-bench-"))
    clips, source = [], ""
    for i in range(segments):
        fr, source = road_world_frames(frames_per_segment, h, w, seed=i)
        clips.append(fr)

    def make(i):
        t = frames_per_segment
        return Segment(frames=clips[i], rel_pose=np.zeros((t, 6), np.float32),
                       world_pose=np.zeros((t, 6), np.float32), speed=np.full(t, 20, np.float32),
                       engaged=np.ones(t, bool), disengage=np.zeros(t, np.int8),
                       times=np.arange(t) / 20.0,
                       meta={"source": source, "segment_id": f"bench{i:04d}", "fps": 20,
                             "camera": {}, "vehicle": {}})

    manifest = write_shards(tmp / "shards", segments, make, maxcount=max(1, segments // 4), progress=False)
    videos = []
    for i, fr in enumerate(clips):
        videos.append(str(tmp / f"source-{i}.mp4"))
        _cv_write(videos[-1], fr)
    n_frames = segments * frames_per_segment

    t_direct = _timed(lambda: [_cv_read(v) for v in videos])

    first = {}

    def run_loader():
        ds = frame_dataset(tmp / "shards", split="all", shuffle_buffer=256)
        n = 0
        for b in make_loader(ds, batch_size=32, num_workers=workers):
            if not n:
                first["t"], first["n"] = time.perf_counter(), len(b["frame"])
            n += len(b["frame"])
        assert n == n_frames, (n, n_frames)

    t0 = time.perf_counter()
    t_loader = _timed(run_loader)
    t_steady = t0 + t_loader - first["t"]
    shard_bytes = sum(s["bytes"] for s in manifest["shards"])
    video_bytes = sum(os.path.getsize(v) for v in videos)
    return {
        "benchmark": "loader", "frames_source": source, "height": h, "width": w,
        "segments": segments, "frames": n_frames, "loader_workers": workers,
        "codec": manifest["codec"],
        "loader_frames_per_s": round(n_frames / t_loader, 1),
        "direct_decode_frames_per_s": round(n_frames / t_direct, 1),
        "loader_steady_frames_per_s": round((n_frames - first["n"]) / t_steady, 1),
        "loader_vs_direct_decode": round(t_direct / t_loader, 3),
        "loader_steady_vs_direct_decode": round(t_direct / n_frames * (n_frames - first["n"]) / t_steady, 3),
        "shard_bytes_per_frame": round(shard_bytes / n_frames, 1),
        "source_mp4v_bytes_per_frame": round(video_bytes / n_frames, 1),
        "raw_bytes_per_frame": h * w * 3,
        "note": "loader_* includes worker start-up, *_steady_* counts from the first batch; measured on a shared, contended 2-core machine",
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codecs", action="store_true", help="print the codec measurement table instead")
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--frames", type=int, default=200, help="frames per segment")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    if a.codecs:
        frames, source = road_world_frames(a.frames, a.height, a.width, seed=0)
        rows = codec_table(frames)
        for r in rows:
            print(r, file=sys.stderr)
        print(json.dumps({"benchmark": "codecs", "frames_source": source, "frames": len(frames),
                          "height": a.height, "width": a.width, "codecs": rows}))
    else:
        print(json.dumps(loader_benchmark(a.segments, a.frames, a.height, a.width, a.workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
