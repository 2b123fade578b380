"""Frame codec for shards: uint8 frames [T,H,W,3] <-> one encoded member (bytes in memory).

Two codecs, chosen by the member's extension (see README "Shards and loaders" for the
measurement that picked the default):

- ``mp4`` (default): H.264 (libx264 via PyAV), 4:4:4 chroma, CRF 18, preset ``ultrafast``,
  one encoder thread (deterministic bytes). ~1.8 KB/frame on road-world frames at 128x256,
  ~43 dB PSNR, ~1000 frames/s to encode or decode on one core; decodes the whole clip
  (H.264 has no cheap random access).
- ``jpgs``: per-frame JPEG (OpenCV, quality 95, 4:4:4) concatenated behind an offset index:
  ~15x larger but decodes single frames by index (``indices=``) and needs only OpenCV.

Nothing here touches the file system: encode returns bytes, decode reads bytes.
"""

from __future__ import annotations

import io
import struct
from typing import Sequence

import cv2
import numpy as np

DEFAULT_CODEC = "mp4"
CODECS = ("mp4", "jpgs")
H264_OPTIONS = {"crf": "18", "preset": "ultrafast", "threads": "1"}
H264_PIX_FMT = "yuv444p"
JPEG_QUALITY = 95
_JPGS_MAGIC = b"JPGS"


class VideoError(ValueError):
    """An encoded frames member could not be decoded."""


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
            or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be uint8 [T,H,W,3] with T>0, got "
                         f"{getattr(frames, 'dtype', type(frames))} {getattr(frames, 'shape', '')}")
    return np.ascontiguousarray(frames)


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a declared dependency
        raise ImportError("the 'mp4' frame codec needs PyAV: pip install av "
                          "(or write shards with codec='jpgs')") from e
    return av


def encode_frames(frames: np.ndarray, codec: str = DEFAULT_CODEC, fps: float = 20.0) -> bytes:
    """frames uint8 [T,H,W,3] RGB -> bytes of one ``codec`` member."""
    frames = _check_frames(frames)
    if codec == "mp4":
        return _encode_h264(frames, fps)
    if codec == "jpgs":
        return _encode_jpgs(frames)
    raise ValueError(f"unknown frame codec {codec!r}; choose one of {CODECS}")


def decode_frames(data: bytes, codec: str = DEFAULT_CODEC,
                  indices: Sequence[int] | None = None) -> np.ndarray:
    """bytes of one ``codec`` member -> uint8 [T,H,W,3] RGB (or [len(indices),H,W,3]).

    Raises ``VideoError`` (no file name: the caller adds it) when the bytes do not decode.
    """
    if codec == "mp4":
        frames = _decode_h264(data)
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
            if idx.size and (idx.min() < -len(frames) or idx.max() >= len(frames)):
                raise VideoError(f"frame index out of range for a {len(frames)}-frame video")
            frames = frames[idx]
        return frames
    if codec == "jpgs":
        return _decode_jpgs(data, indices)
    raise VideoError(f"unknown frame codec {codec!r}; expected one of {CODECS}")


def count_frames(data: bytes, codec: str = DEFAULT_CODEC) -> int:
    if codec == "jpgs":
        return len(_jpgs_offsets(data)) - 1
    return len(decode_frames(data, codec))


# ----------------------------------------------------------------------------- H.264 (PyAV)
def _encode_h264(frames: np.ndarray, fps: float, codec: str = "libx264", fmt: str = "mp4",
                 options: dict | None = None, pix_fmt: str = H264_PIX_FMT) -> bytes:
    """Encode with PyAV in memory; the keyword arguments let benchmarks/loader.py sweep codecs."""
    av = _av()
    from fractions import Fraction

    _, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        rate = Fraction(fps).limit_denominator(1000)
        stream = container.add_stream(codec, rate=rate,
                                      options=dict(H264_OPTIONS if options is None else options))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


WEBM_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}


def encode_webm(frames: np.ndarray, fps: float) -> bytes:
    """RGB uint8 [T, H, W, 3] -> browser-playable VP9 .webm bytes (libvpx's real-time preset: a
    21-frame 270x1024 clip in 0.14 s, against 2.9 s through OpenCV's VideoWriter). Odd sizes are
    padded by one black row/column (4:2:0 chroma needs even ones)."""
    frames = np.asarray(frames)
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    return _encode_h264(frames, fps, codec="libvpx-vp9", fmt="webm", options=WEBM_OPTIONS, pix_fmt="yuv420p")


# swscale on one thread. With its automatic slice threads (PyAV 18 passes threads=0), a clean-clone
# test run hung in tests/test_loaders.py (2026-12-07): a forked DataLoader worker sat in
# avpriv_slicethread_execute (gdb) on a pool condition none of its threads would signal, the
# pattern of a thread pool a fork did not copy. PyAV before the ``threads`` argument converts on one
# thread anyway, and a 64x128 frame gains nothing from slices.
_RGB = {"format": "rgb24", "threads": 1}


def _to_rgb(frame) -> np.ndarray:
    try:
        return frame.to_ndarray(**_RGB)
    except TypeError:
        if "threads" not in _RGB:
            raise
        _RGB.pop("threads")
        return frame.to_ndarray(**_RGB)


def _decode_h264(data: bytes) -> np.ndarray:
    av = _av()
    try:
        with av.open(io.BytesIO(data), "r") as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            out = [_to_rgb(f) for f in container.decode(stream)]
    except VideoError:
        raise
    except Exception as e:  # av.error.InvalidDataError and friends
        raise VideoError(f"unreadable H.264/mp4 video ({type(e).__name__}: {e})") from None
    if not out:
        raise VideoError("video decoded to zero frames")
    return np.stack(out)


# ----------------------------------------------------------------------------- per-frame JPEG
def _encode_jpgs(frames: np.ndarray) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    parts = []
    for f in frames:
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError("JPEG encoding failed")
        parts.append(enc.tobytes())
    offsets = np.cumsum([0] + [len(p) for p in parts]).astype("<u8")
    header = _JPGS_MAGIC + struct.pack("<I", len(parts)) + offsets.tobytes()
    return header + b"".join(parts)


def _jpgs_offsets(data: bytes) -> np.ndarray:
    if len(data) < 8 or data[:4] != _JPGS_MAGIC:
        raise VideoError("not a jpgs frame stream (bad magic)")
    (n,) = struct.unpack("<I", data[4:8])
    end = 8 + 8 * (n + 1)
    if len(data) < end:
        raise VideoError("truncated jpgs header")
    offsets = np.frombuffer(data[8:end], dtype="<u8").astype(np.int64) + end
    if offsets[-1] != len(data) or (np.diff(offsets) <= 0).any():
        raise VideoError(f"jpgs index does not match the data ({len(data)} bytes)")
    return offsets


def _decode_jpgs(data: bytes, indices: Sequence[int] | None) -> np.ndarray:
    offsets = _jpgs_offsets(data)
    n = len(offsets) - 1
    idx = range(n) if indices is None else [int(i) for i in indices]
    buf = np.frombuffer(data, dtype=np.uint8)
    out = []
    for i in idx:
        if not -n <= i < n:
            raise VideoError(f"frame index {i} out of range for {n} frames")
        i %= n
        img = cv2.imdecode(buf[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
        if img is None:
            raise VideoError(f"frame {i}: unreadable JPEG")
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if not out:
        raise VideoError("no frames")
    return np.stack(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean PSNR in dB over frames of two uint8 arrays [T,H,W,3] (identical frames -> 99)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    per_frame = 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))
    return float(np.minimum(per_frame, 99.0).mean())
