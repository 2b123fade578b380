"""Fleet driver behaviours (autopilot.behaviours): the logged motion departs from the road,
STEER and BRAKE events happen in a small fleet, lane changes end centred in another lane."""

import numpy as np
import pytest

from drivegpt.data.schema import Cause
from drivegpt.sim.roadworld import Autopilot, RoadWorldConfig, drive_segment
from drivegpt.sim.roadworld.fleet import road_deviation

SEEDS = range(8)
SECONDS = 20.0


def _fleet(enabled: bool):
    sim = {"autopilot": {"behaviours": {"enabled": enabled}}}
    return [drive_segment(i, SECONDS, sim, 16, 32) for i in SEEDS]


@pytest.fixture(scope="module")
def fleets():
    return _fleet(True), _fleet(False)


def test_behaviours_spread_the_yaw_deviation_and_lane_offset(fleets):
    on, off = fleets
    dev_on, dev_off = (np.concatenate([road_deviation(s)[0] for s in f]) for f in (on, off))
    off_on, off_off = (np.concatenate([road_deviation(s)[2] for s in f]) for f in (on, off))
    # yaw rate - road curvature x speed: what a commanded turn looks like in the frames
    # (the tails come from poor autopilots and takeovers in both fleets; the bulk moves most)
    for q in (0.5, 0.75):
        a, b = np.quantile(np.abs(dev_on), q), np.quantile(np.abs(dev_off), q)
        assert a > 2.0 * b, (q, a, b)
    assert (np.abs(dev_on) > 0.03).mean() > 2.0 * (np.abs(dev_off) > 0.03).mean()
    assert dev_on.std() > 1.5 * dev_off.std(), (dev_on.std(), dev_off.std())
    assert off_on.std() > 1.3 * off_off.std(), (off_on.std(), off_off.std())
    # longitudinal accel varies more too
    acc = [np.concatenate([np.diff(s.speed.astype(np.float64)) * 20 for s in f]).std() for f in (on, off)]
    assert acc[0] > 1.15 * acc[1], acc
    # the episodes are logged per segment
    kinds = {e["kind"] for s in on for e in s.meta["sim"]["behaviours"]["episodes"]}
    assert {"weave", "drift", "brake"} <= kinds, kinds
    assert all(s.meta["sim"]["behaviours"] is None for s in off)


def test_small_fleet_has_steer_and_brake_events(fleets):
    on, off = fleets
    counts = {c: sum(int((s.disengage == c).sum()) for s in on) for c in (Cause.STEER, Cause.BRAKE)}
    assert counts[Cause.STEER] >= 2 and counts[Cause.BRAKE] >= 2, counts
    n_on = sum(int((s.disengage != 0).sum()) for s in on)
    n_off = sum(int((s.disengage != 0).sum()) for s in off)
    assert n_on > n_off, (n_on, n_off)


def _lane_change_fleet(complete: float, seeds=range(4)):
    b = {k: 0.0 for k in ("weave_rate", "drift_rate", "brake_rate", "late_brake_rate", "tailgate_rate",
                          "surge_rate")}
    b.update(lane_change_rate=30.0, lane_change_complete=complete)
    return [drive_segment(i, 15.0, {"autopilot": {"behaviours": b}}, 16, 32) for i in seeds]


@pytest.mark.parametrize("complete", [1.0, 0.0])
def test_lane_changes_end_centred_in_the_target_lane(complete):
    from drivegpt.sim.roadworld.replay import world_from_meta

    done = 0
    for seg in _lane_change_fleet(complete):
        road = world_from_meta(seg.meta, 8, 16).road
        _, lat, _ = road_deviation(seg)
        for ep in seg.meta["sim"]["behaviours"]["episodes"]:
            if ep["kind"] != "lane_change" or ep["end"] is None:
                continue
            assert ep["from_lane"] != ep["to_lane"] and abs(ep["from_lane"] - ep["to_lane"]) == 1
            # the safety driver flags it (0.9 m off the lane centre); the human finishes it
            # (complete=1) or returns (complete=0) and re-engages once centred
            assert seg.disengage[ep["end"]] == Cause.STEER
            back = np.flatnonzero(seg.engaged[ep["end"] + 1:])
            if len(back) == 0:
                continue
            t = ep["end"] + 1 + int(back[0])
            lane = ep["to_lane"] if complete else ep["from_lane"]
            assert abs(lat[t] - float(road.lane_center(lane))) < 0.4, (seg.meta["segment_id"], ep)
            assert ep["taken_over"] == ("completed" if complete else "aborted")
            done += 1
    assert done >= 2


def test_bare_autopilot_has_no_behaviours():
    """The closed-loop baseline (rl.evaluate) builds Autopilot(seed, cfg.autopilot, fps)."""
    cfg = RoadWorldConfig()
    assert cfg.autopilot.behaviours.enabled
    assert Autopilot(3, cfg.autopilot, cfg.fps).behaviours is None
    assert Autopilot(3, cfg.autopilot, cfg.fps, behaviours=True).behaviours is not None


def test_segments_log_the_autopilots_cruise_set_speed(fleets):
    """meta.cruise_speed is the autopilot's set speed (its speed factor times the road's limit):
    the driving stays under it, and it tells fast roads from slow ones."""
    for seg in fleets[0]:
        sim = seg.meta["sim"]
        c = seg.meta["cruise_speed"]
        assert c == pytest.approx(sim["speed_limit"] * sim["autopilot"]["speed_factor"])
        assert 0.8 * sim["speed_limit"] <= c <= sim["speed_limit"]
        assert np.percentile(seg.speed[seg.engaged], 90) <= 1.1 * c
