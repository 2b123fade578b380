"""Shard writing and reading: round trip, determinism, atomicity/resume, URL specs, bad input."""

from __future__ import annotations

import io
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from drivegpt.data.schema import ARRAY_FIELDS, SegmentError
from drivegpt.data.shards import MANIFEST, ShardError, item_to_members, read_manifest, write_shards
from drivegpt.data.shard_reading import IncompleteShardsError, expand_urls, iter_samples
from drivegpt.data.video import decode_frames, encode_frames, psnr
from synth_fleet import make_item, make_segment, make_token_item, road_frames

LABELS = [k for k in ARRAY_FIELDS if k != "frames"]


@pytest.mark.parametrize("codec,min_psnr", [("mp4", 32.0), ("jpgs", 33.0)])
def test_codec_round_trip_quality_and_random_access(codec, min_psnr):
    frames = road_frames(16, 64, 128, seed=1)
    blob = encode_frames(frames, codec)
    out = decode_frames(blob, codec)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert psnr(frames, out) >= min_psnr
    assert len(blob) < frames.nbytes / 4  # actually compresses
    assert encode_frames(frames, codec) == blob  # deterministic bytes
    sub = decode_frames(blob, codec, indices=[5, 0, 15])
    np.testing.assert_array_equal(sub, out[[5, 0, 15]])


def test_webm_for_people_round_trips_and_pads_odd_sizes(tmp_path):
    """The report's videos (VP9 .webm through PyAV): every frame comes back, near the input, with
    an odd size padded to an even one."""
    import av

    from drivegpt.data.video import encode_webm

    frames = road_frames(12, 64, 128, seed=2)[:, :63, :127]
    blob = encode_webm(frames, 5.0)
    assert blob[:4] == b"\x1a\x45\xdf\xa3" and len(blob) < frames.nbytes / 4  # EBML, compressed
    with av.open(io.BytesIO(blob)) as c:
        out = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
    assert out.shape == (12, 64, 128, 3)
    assert psnr(frames, out[:, :63, :127]) >= 28.0


@pytest.mark.parametrize("codec", ["mp4", "jpgs"])
def test_round_trip_arrays_bit_exact_frames_within_tolerance(tmp_path, codec):
    segs = [make_segment(seed=i, t=14, events={6: 2}, disengaged=(7, 10)) for i in range(3)]
    manifest = write_shards(tmp_path, 3, segs.__getitem__, maxcount=2, codec=codec, progress=False)
    assert manifest["complete"] and manifest["kind"] == "frames"
    assert [s["segment_ids"] for s in manifest["shards"]] == [["seg0000", "seg0001"], ["seg0002"]]
    assert manifest["frames"] == 42 and manifest["samples"] == 3
    back = list(iter_samples(tmp_path))
    assert [s.segment_id for s in back] == ["seg0000", "seg0001", "seg0002"]
    for ref, got in zip(segs, back):
        for k in LABELS:
            a, b = getattr(ref, k), getattr(got, k)
            assert a.dtype == b.dtype and np.array_equal(a, b), k
        assert set(got.extras) == {"lane_mask", "traffic"}
        for k, v in ref.extras.items():
            assert got.extras[k].dtype == v.dtype and np.array_equal(got.extras[k], v), k
        assert got.meta == ref.meta
        assert got.frames.shape == ref.frames.shape
        assert psnr(ref.frames, got.frames) >= 30.0


def test_token_samples_round_trip(tmp_path):
    manifest = write_shards(tmp_path, 3, make_token_item, maxcount=2, progress=False)
    assert manifest["kind"] == "tokens"
    back = list(iter_samples(tmp_path))
    for i, got in enumerate(back):
        ref = make_token_item(i)
        assert isinstance(got, dict)
        assert got["tokens"].dtype == np.int16 and np.array_equal(got["tokens"], ref["tokens"])
        assert np.array_equal(got["rel_pose"], ref["rel_pose"]) and got["meta"] == ref["meta"]


def test_bad_segment_id_and_mixed_kinds_rejected(tmp_path):
    seg = make_segment(0, t=6)
    seg.meta["segment_id"] = "a.b"
    with pytest.raises(SegmentError, match="segment_id"):
        item_to_members(seg)
    items = [make_segment(0, t=6), make_token_item(1)]
    with pytest.raises(ValueError, match="item 1: a tokens sample in frames shards"):
        write_shards(tmp_path, 2, items.__getitem__, maxcount=2, progress=False)


def _crash_at_3(i):
    if i == 3:
        raise RuntimeError("simulated crash")
    return make_item(i)


def _killed_at_3(i):
    if i == 3:
        os._exit(9)  # like kill -9 mid-shard: no cleanup runs
    return make_item(i)


def _run_killed(out):
    write_shards(out, 6, _killed_at_3, maxcount=2, progress=False)


def _visible(d: Path):
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def test_atomic_crash_resume_matches_clean_run(tmp_path):
    clean = write_shards(tmp_path / "clean", 6, make_item, maxcount=2, workers=2, progress=False)
    # an exception mid-shard 1: shard 0 kept and listed, nothing of shard 1 visible or left over
    out = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_shards(out, 6, _crash_at_3, maxcount=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "shard-000000.tar"]
    m = read_manifest(out)
    assert not m["complete"] and [s["name"] for s in m["shards"]] == ["shard-000000.tar"]
    # a hard kill mid-shard: at most a hidden temporary file, readers see finished shards only
    killed = tmp_path / "killed"
    p = multiprocessing.get_context("fork").Process(target=_run_killed, args=(killed,))
    p.start()
    p.join(60)
    assert p.exitcode == 9
    assert _visible(killed) == [MANIFEST, "shard-000000.tar"]
    assert expand_urls(killed, check=False) == [str(killed / "shard-000000.tar")]
    # readers refuse the unfinished directory (issue 14: 1/3 of a fleet must not train silently)
    with pytest.raises(IncompleteShardsError, match=r"incomplete \(1 of 3 shards.*re-running"):
        list(iter_samples(killed))
    # re-runs finish the job (shard 0 is not rewritten) and equal the clean run
    for d in (out, killed):
        before = (d / "shard-000000.tar").stat().st_mtime_ns
        m = write_shards(d, 6, make_item, maxcount=2, workers=2, progress=False)
        assert (d / "shard-000000.tar").stat().st_mtime_ns == before
        assert m == clean
        assert sorted(p.name for p in d.iterdir()) == _visible(tmp_path / "clean")
    # a damaged finished shard fails its checksum and is rewritten
    (out / "shard-000002.tar").write_bytes(b"junk")
    assert write_shards(out, 6, make_item, maxcount=2, progress=False) == clean
    with pytest.raises(ValueError, match="maxcount=2"):
        write_shards(out, 6, make_item, maxcount=3, progress=False)


def test_iter_samples_keep_decodes_only_the_kept_segments(tmp_path, monkeypatch):
    import drivegpt.data.shard_reading as sr

    write_shards(tmp_path / "s", 4, make_item, maxcount=2, progress=False)  # seg0000 .. seg0003
    decoded = []
    real = sr.decode_sample
    monkeypatch.setattr(sr, "decode_sample", lambda sample, **kw: decoded.append(sample["__key__"]) or real(sample, **kw))
    got = [s.segment_id for s in iter_samples(str(tmp_path / "s"), keep=lambda sid: sid in ("seg0001", "seg0002"))]
    assert got == ["seg0001", "seg0002"] and len(decoded) == 2
    assert [s.segment_id for s in iter_samples(str(tmp_path / "s"))] == [f"seg{i:04d}" for i in range(4)]


def test_expand_urls(tmp_path):
    write_shards(tmp_path, 5, make_item, maxcount=2, progress=False)
    names = [str(tmp_path / f"shard-{k:06d}.tar") for k in range(3)]
    (tmp_path / ".shard-000009.tar.x.tmp").write_bytes(b"")
    assert expand_urls(tmp_path) == names
    assert expand_urls(str(tmp_path / "shard-{000000..000002}.tar")) == names
    assert expand_urls(str(tmp_path / "shard-*.tar")) == names
    assert expand_urls(names[1]) == [names[1]]
    assert expand_urls([names[2], names[0]]) == [names[2], names[0]]
    pipe = f"pipe:cat {tmp_path}/shard-{{000000..000001}}.tar"
    assert expand_urls(pipe) == [f"pipe:cat {n}" for n in names[:2]]
    assert [s.segment_id for s in iter_samples(pipe)] == ["seg0000", "seg0001", "seg0002", "seg0003"]
    with pytest.raises(FileNotFoundError, match=r"shard-000003.tar.*\(5 missing\)"):
        expand_urls(str(tmp_path / "shard-{000000..000007}.tar"))
    with pytest.raises(ValueError, match="data.shards"):
        expand_urls("???")


# ----------------------------------------------------------------------------- bad input
def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _write_tar(path: Path, samples):
    with open(path, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        for key, members in samples:
            w.write({"__key__": key, **members})


def _good(i):
    return item_to_members(make_segment(seed=i, t=8, lane_mask=False))[:2]


def _bad_sample(kind):
    key, m = _good(1)
    if kind == "video":
        m["frames.mp4"] = b"\x00\x00\x01 this is not a video" * 20
    elif kind == "missing":
        del m["speed.npy"]
    elif kind == "length":
        m["speed.npy"] = _npy(np.zeros(7, np.float32))
    elif kind == "nan":
        rel = np.zeros((8, 6), np.float32)
        rel[3, 1] = np.nan
        m["rel_pose.npy"] = _npy(rel)
    elif kind == "meta":
        m["meta.json"] = b"{not json"
    return key, m


@pytest.mark.parametrize("kind,message", [
    ("video", r"seg0001.*'frames.mp4'.*unreadable"),
    ("missing", r"seg0001.*missing member.*speed.npy"),
    ("length", r"seg0001.*'speed'.*length 7 != 8"),
    ("nan", r"seg0001.*'rel_pose'.*NaN.*frame 3"),
    ("meta", r"seg0001.*meta.json.*not valid JSON"),
])
def test_bad_sample_named_and_skippable(tmp_path, kind, message):
    path = tmp_path / "bad-000000.tar"
    _write_tar(path, [_good(0), _bad_sample(kind), _good(2)])
    with pytest.raises(ShardError, match=message) as err:
        list(iter_samples(path))
    assert str(path) in str(err.value)
    stats = {}
    got = [s.segment_id for s in iter_samples(path, skip_bad=True, stats=stats)]
    assert got == ["seg0000", "seg0002"]
    assert stats["skipped"] == 1 and "seg0001" in stats["errors"][0]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_tar_named_and_skippable(tmp_path, damage):
    good = tmp_path / "a-000000.tar"
    _write_tar(good, [_good(0)])
    bad = tmp_path / "a-000001.tar"
    _write_tar(bad, [_good(1), _good(2)])
    data = bad.read_bytes()
    bad.write_bytes(os.urandom(3000) if damage == "garbage" else data[: len(data) // 2 + 100])
    with pytest.raises(ShardError, match="a-000001.tar") as err:
        list(iter_samples([str(good), str(bad)]))
    assert "corrupt or truncated" in str(err.value) or "missing member" in str(err.value)
    stats = {}
    got = [s.segment_id for s in iter_samples([str(bad), str(good)], skip_bad=True, stats=stats)]
    assert "seg0000" in got and "seg0002" not in got
    assert stats["skipped"] >= 1


def test_large_arrays_are_compressed_and_bit_exact(tmp_path):
    seg = make_segment(seed=5, t=40)  # lane_mask 40x32x64 bool = 80 KiB
    seg.extras["depth"] = np.random.default_rng(0).random((40, 32, 64)).astype(np.float32)
    key, members, n = item_to_members(seg, codec="jpgs")
    assert {"lane_mask.bits.npz", "depth.npy.gz", "speed.npy", "frames.jpgs"} <= set(members)
    assert len(members["lane_mask.bits.npz"]) < seg.extras["lane_mask"].nbytes / 4
    write_shards(tmp_path, 1, lambda i: seg, maxcount=1, codec="jpgs", progress=False)
    (got,) = list(iter_samples(tmp_path))
    for k in ("lane_mask", "depth"):
        assert got.extras[k].dtype == seg.extras[k].dtype and np.array_equal(got.extras[k], seg.extras[k])


def test_directory_spec_finds_shards_in_rank_subdirectories(tmp_path):
    from drivegpt.data.shard_reading import expand_urls

    for rel in ("rank0/shard-000000.tar", "rank1/shard-000000.tar", "top.tar", ".tmp/partial.tar",
                "rank0/.shard-000001.tar.tmp.tar"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    got = [str(__import__("pathlib").Path(u).relative_to(tmp_path)) for u in expand_urls(tmp_path)]
    assert got == ["rank0/shard-000000.tar", "rank1/shard-000000.tar", "top.tar"]
