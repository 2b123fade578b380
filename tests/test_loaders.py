"""Loaders: held-out split, rank x worker splitting, strided windows, frame loader, datamodule."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from drivegpt.data.labels import disengagement_targets
from drivegpt.data.loaders import (frame_dataset, make_loader, segment_windows, split_of, window_dataset,
                          window_starts)
from drivegpt.data.poses import matrix_to_pose, pose_to_matrix
from drivegpt.data.schema import Segment
from drivegpt.data.shards import ShardError, write_shards
from synth_fleet import make_item, make_segment


def test_split_of_is_deterministic_by_segment_and_near_fraction():
    ids = [f"route{i}-seg{j}" for i in range(200) for j in range(5)]
    splits = [split_of(s, 0.2) for s in ids]
    assert splits == [split_of(s, 0.2) for s in ids]
    assert set(splits) == {"train", "val"}
    assert 0.15 < splits.count("val") / len(ids) < 0.25
    assert all(split_of(s, 0.0) == "train" for s in ids[:50])
    assert all(split_of(s, 1.0) == "val" for s in ids[:50])
    # a larger fraction only moves segments from train to val
    assert all(split_of(s, 0.5) == "val" for s in ids if split_of(s, 0.2) == "val")


@pytest.fixture(scope="module")
def six_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("six")
    write_shards(out, 6, make_item, maxcount=1, progress=False)
    return out


def test_two_ranks_two_workers_see_every_sample_once(six_shards, monkeypatch):
    seen = Counter()
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = frame_dataset(six_shards, split="all", shuffle_buffer=20, seed=3)
        loader = make_loader(ds, batch_size=5, num_workers=2)
        ids = set()
        for batch in loader:
            for sid, i in zip(batch["segment_id"], batch["index"].tolist()):
                seen[(sid, i)] += 1
                ids.add(sid)
        per_rank.append(ids)
    expected = {(make_item(i).segment_id, j) for i in range(6) for j in range(len(make_item(i)))}
    assert set(seen) == expected and set(seen.values()) == {1}
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ValueError, match="6 shard.*8 ranks"):
        frame_dataset(six_shards, split="all")


def test_resampled_epoch_length_and_split_filter(six_shards):
    val = {make_item(i).segment_id for i in range(6) if split_of(make_item(i).segment_id, 0.7) == "val"}
    assert 0 < len(val) < 6
    ds = window_dataset(six_shards, context_frames=2, stride=2, split="val", val_fraction=0.7,
                        shuffle_buffer=10, resampled=True)
    loader = make_loader(ds, batch_size=3, num_workers=0, epoch_samples=12)
    batches = list(loader)
    assert len(batches) == 4
    assert {s for b in batches for s in b["segment_id"]} <= val
    train = {w["segment_id"] for w in window_dataset(six_shards, 2, 2, split="train", val_fraction=0.7)}
    assert train == {make_item(i).segment_id for i in range(6)} - val


def _circle_segment(t=13, radius=20.0, dtheta=0.05, fps=10.0, climb=False):
    """Hand-made trajectory: constant-speed circle to the left (optionally climbing, nose up)."""
    world = np.zeros((t, 6))
    th = dtheta * np.arange(t)
    world[:, 0], world[:, 1], world[:, 5] = radius * np.sin(th), radius * (1 - np.cos(th)), th
    if climb:
        world[:, 2], world[:, 4] = 0.1 * np.arange(t), -0.02  # pitch < 0 is nose up
    mats = pose_to_matrix(world)
    rel = np.zeros((t, 6))
    rel[:-1] = matrix_to_pose(np.linalg.inv(mats[:-1]) @ mats[1:])
    seg = make_segment(seed=0, t=t, fps=fps, lane_mask=False)
    seg.rel_pose, seg.world_pose = rel.astype(np.float32), world.astype(np.float32)
    return seg, mats


@pytest.mark.parametrize("climb", [False, True])
def test_window_pose_is_composition_of_skipped_moves(climb):
    seg, mats = _circle_segment(climb=climb)
    radius, dth = 20.0, 3 * 0.05  # 3 frames per kept step
    stride, k = 3, 3
    assert window_starts(13, k, stride).tolist() == [0, 3]  # start + K*stride <= 12
    wins = list(segment_windows(seg, k, stride, starts=window_starts(13, k, stride)))
    assert [w["start"] for w in wins] == [0, 3]
    for w in wins:
        for j in range(k):
            a = w["start"] + j * stride
            truth = matrix_to_pose(np.linalg.inv(mats[a]) @ mats[a + stride])  # full 6-DoF
            np.testing.assert_allclose(w["rel_pose"][j], truth, atol=2e-5)
            if not climb:  # closed form: a chord of the circle, turned by the arc angle
                chord = [radius * np.sin(dth), radius * (1 - np.cos(dth)), 0, 0, 0, dth]
                np.testing.assert_allclose(w["rel_pose"][j], chord, atol=2e-5)
        assert w["frames"].shape == (k, 32, 64, 3)
        np.testing.assert_array_equal(w["speed"], seg.speed[w["start"] + stride * np.arange(k)])
    # naive subsampling would be wrong: the composed move is ~stride times one step
    assert wins[0]["rel_pose"][0, 0] > 2.5 * seg.rel_pose[0, 0]


def test_stride_labels_assign_skipped_frame_events_to_their_interval():
    # 20 frames at 10 Hz, stride 4: kept frames 0, 4, 8, 12; BRAKE on skipped frame 6
    seg = make_segment(seed=1, t=20, fps=10.0, events={6: 2}, disengaged=(7, 12), lane_mask=False)
    (w,) = list(segment_windows(seg, context_frames=4, stride=4, horizons=(0.3, 1.0), starts=[0]))
    assert w["cause"].tolist() == [0, 2, 0, 0]  # 6 is in (4, 8]: the move from kept frame 1
    assert w["engaged"].tolist() == [True, True, False, True]
    tg, mask = disengagement_targets(seg.disengage, seg.engaged, seg.times, (0.3, 1.0))
    np.testing.assert_array_equal(w["targets"], tg[[0, 4, 8, 12]])
    np.testing.assert_array_equal(w["mask"], mask[[0, 4, 8, 12]])
    assert w["targets"][1, :, 1].tolist() == [1.0, 1.0]  # from frame 4, 6 is 0.2 s ahead
    assert w["targets"][0, :, 1].tolist() == [0.0, 1.0]  # from frame 0, 0.6 s ahead
    assert not w["mask"][2].any()  # human driving at kept frame 8


def test_window_dataset_tokens_and_frames_agree(tmp_path):
    from synth_fleet import make_token_item

    write_shards(tmp_path / "f", 2, make_item, maxcount=1, progress=False)
    write_shards(tmp_path / "t", 2, make_token_item, maxcount=1, progress=False)
    fw = list(window_dataset(tmp_path / "f", 2, 3, split="all", shuffle_buffer=0, size=(16, 32)))
    tw = list(window_dataset(tmp_path / "t", 2, 3, split="all", shuffle_buffer=0, key="tokens"))
    assert fw[0]["frames"].shape == (2, 16, 32, 3) and fw[0]["frames"].dtype == np.uint8
    assert tw[0]["tokens"].shape == (2, 2, 4) and tw[0]["tokens"].dtype == np.int64
    ref = make_token_item(0)
    np.testing.assert_array_equal(tw[0]["tokens"], ref["tokens"][[0, 3]])
    assert [w["start"] for w in tw if w["segment_id"] == "seg0000"] == [0, 3]  # 12 frames, K*stride=6


def test_frame_dataset_yields_every_frame_with_its_lane_mask(tmp_path):
    segs = [make_segment(seed=i, t=10) for i in range(2)]
    write_shards(tmp_path, 2, segs.__getitem__, maxcount=1, codec="jpgs", progress=False)
    got = list(frame_dataset(tmp_path, split="all", shuffle_buffer=8, seed=1))
    assert len(got) == 20
    assert [g["index"] for g in got[:10]] != list(range(10))  # shuffled
    by_id = {s.segment_id: s for s in segs}
    for g in got:
        ref = by_id[g["segment_id"]]
        np.testing.assert_array_equal(g["lane_mask"], ref.extras["lane_mask"][g["index"]])
        assert np.abs(g["frame"].astype(int) - ref.frames[g["index"]]).mean() < 4
    sub = list(frame_dataset(tmp_path, split="all", shuffle_buffer=0, frames_per_segment=3))
    assert len(sub) == 6 and len({(g["segment_id"], g["index"]) for g in sub}) == 6


def test_loader_bad_sample_fails_or_is_skipped(tmp_path):
    write_shards(tmp_path, 3, make_item, maxcount=1, progress=False)
    (tmp_path / "shard-000001.tar").write_bytes(b"\x00garbage" * 200)
    with pytest.raises(ShardError, match="shard-000001.tar"):
        list(window_dataset(tmp_path, 2, 2, split="all", shuffle_buffer=0))
    stats = {}
    got = {w["segment_id"] for w in window_dataset(tmp_path, 2, 2, split="all", shuffle_buffer=0,
                                                   skip_bad=True, stats=stats)}
    assert got == {"seg0000", "seg0002"} and stats["skipped"] == 1


def test_datamodule_from_tiny_config(six_shards):
    from drivegpt.data.datamodule import FleetDataModule
    from drivegpt.config import compose

    cfg = compose("fleet_generate", ["experiment=tiny", f"data.shards={six_shards}",
                                     "data.frame_height=16", "data.frame_width=32"])
    dm = FleetDataModule(cfg, kind="windows", key="frames")
    batch = next(iter(dm.train_dataloader()))
    k = cfg.data.context_frames
    assert batch["frames"].shape == (cfg.data.batch_size, k, 16, 32, 3)
    assert batch["targets"].shape == (cfg.data.batch_size, k, len(cfg.data.horizons), 3)
    assert batch["rel_pose"].dtype.is_floating_point and batch["mask"].dtype.is_floating_point is False
    val = {s for b in dm.val_dataloader() for s in b["segment_id"]}
    assert all(split_of(s, cfg.data.val_fraction) == "val" for s in val)
    with pytest.raises(ValueError, match="epoch_samples"):
        FleetDataModule(compose("fleet_generate", ["experiment=tiny", f"data.shards={six_shards}",
                                                   "data.resampled=true"]), "frames").train_dataloader()


def test_road_world_segment_through_shards_and_windows(tmp_path):
    """A real road-world drive: bit-exact arrays, frames within tolerance, and the strided
    poses agree with the drive's world poses (inv(W_i) @ W_{i+stride})."""
    roadworld = pytest.importorskip("drivegpt.sim.roadworld")
    from drivegpt.data.shard_reading import iter_samples
    from drivegpt.data.video import psnr

    seg = roadworld.drive_segment(1, seconds=3, height=32, width=64)
    write_shards(tmp_path, 1, lambda i: seg, maxcount=1, progress=False)
    (got,) = list(iter_samples(tmp_path))
    for k, v in seg.arrays().items():
        assert np.array_equal(getattr(got, k, None) if k in got.__dict__ else got.extras[k], v), k
    assert psnr(seg.frames, got.frames) >= 32.0
    world = pose_to_matrix(seg.world_pose)
    wins = list(window_dataset(tmp_path, 3, 4, split="all", shuffle_buffer=0))
    assert len(wins) == len(window_starts(len(seg), 3, 4))
    for w in wins:
        for j in range(3):
            i = w["start"] + 4 * j
            truth = matrix_to_pose(np.linalg.inv(world[i]) @ world[i + 4])
            np.testing.assert_allclose(w["rel_pose"][j], truth, atol=1e-4)


def test_windows_carry_the_cruise_set_speed_or_nan_when_not_logged():
    seg = make_segment(t=30)
    wins = list(segment_windows(seg, 3, 2))
    assert wins and all(np.isnan(w["cruise_speed"]).all() for w in wins)
    seg.meta["cruise_speed"] = 27.5
    wins = list(segment_windows(seg, 3, 2))
    assert all(w["cruise_speed"].shape == (3,) and np.allclose(w["cruise_speed"], 27.5) for w in wins)


def test_teardown_ends_the_persistent_workers_of_its_own_loaders_only(six_shards):
    """Lightning cannot see the DataLoader inside a WebLoader, so the datamodule ends its workers
    at teardown (else they live until a garbage collection, where each join waited 5 s)."""
    from drivegpt.config import compose
    from drivegpt.data.datamodule import FleetDataModule
    from drivegpt.data.loaders import shutdown_workers

    cfg = compose("fleet_generate", ["experiment=tiny", f"data.shards={six_shards}", "data.num_workers=2",
                                     "data.frame_height=16", "data.frame_width=32", "data.val_fraction=0.0"])
    mine, other = FleetDataModule(cfg, kind="frames"), FleetDataModule(cfg, kind="frames")
    loader, other_loader = mine.train_dataloader(), other.train_dataloader()
    first = next(iter(loader))
    next(iter(other_loader))
    workers = loader.pipeline[0]._iterator._workers
    other_workers = other_loader.pipeline[0]._iterator._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers + other_workers)
    mine.teardown("fit")
    assert not any(w.is_alive() for w in workers) and all(w.is_alive() for w in other_workers)
    again = next(iter(loader))  # a loader iterated again starts new workers, from the start
    assert again["segment_id"] == first["segment_id"] and (again["frame"] == first["frame"]).all()
    assert shutdown_workers() >= 2 and not any(w.is_alive() for w in other_workers)
    import pickle  # DDP spawn pickles the datamodule; its loaders stay behind

    copy = pickle.loads(pickle.dumps(mine))
    assert len(copy._loaders) == 0 and next(iter(copy.train_dataloader()))["segment_id"] == first["segment_id"]
    copy.teardown("fit")


def test_windows_carry_the_speed_each_horizon_ahead_or_nan_past_the_log():
    seg = make_segment(t=60)  # 20 fps, 3 s
    seg.speed[:] = 10.0 + np.arange(60, dtype=np.float32)  # +1 m/s per frame
    wins = list(segment_windows(seg, 3, 4, horizons=(0.5, 2.0)))
    assert wins
    for w in wins:
        frames = w["start"] + 4 * np.arange(3)
        for k, i in enumerate(frames):
            for j, h in enumerate((0.5, 2.0)):
                ahead = i + int(round(h * 20))
                want = 10.0 + ahead if ahead < 60 else np.nan
                np.testing.assert_equal(w["speed_ahead"][k, j], np.float32(want))
    assert any(np.isnan(w["speed_ahead"][:, 1]).any() for w in wins)  # 2 s past the last windows: unknown
