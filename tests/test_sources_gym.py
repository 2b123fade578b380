"""gymnasium recorder on CarRacing-v3 (short recordings: ~1.5 s of env time each)."""

import numpy as np
import pytest

from drivegpt.data.schema import Cause
from drivegpt.data.sources.common import SourceError
from drivegpt.data.sources.gym_recorder import GymSource, import_path

EXAMPLE = dict(
    env_id="CarRacing-v3",
    policy="drivegpt.data.sources.gym_recorder:CarRacingPilot",
    takeover="drivegpt.data.sources.gym_recorder:CarRacingPilot",
    pose="drivegpt.data.sources.gym_recorder:car_racing_pose",
    speed="drivegpt.data.sources.gym_recorder:car_racing_speed",
    disengage="drivegpt.data.sources.gym_recorder:car_racing_off_track",
    height=16, width=32, center_row=0.55,
)


def test_good_pilot_stays_engaged_and_poses_match_motion():
    src = GymSource(episodes=2, seconds=1.6, first_seed=3, **EXAMPLE)
    assert src.n_items == 2
    seg = src.make_item(1)
    T = len(seg)
    assert T == 80 and seg.meta["fps"] == 50 and seg.meta["seed"] == 4
    assert seg.frames.shape == (T, 16, 32, 3) and seg.frames.std() > 5
    assert seg.engaged.all() and not seg.disengage.any()
    assert seg.speed[-1] > 10  # accelerating from standstill
    moving = seg.speed[:-1] > 5
    # relative pose forward motion == speed / fps (Box2D integrates position with the updated
    # velocity, so the move t -> t+1 is speed[t+1] / fps); no sideways slip in the ego frame
    np.testing.assert_allclose(seg.rel_pose[:-1, 0][moving], seg.speed[1:][moving] / 50, rtol=0.02, atol=0.002)
    assert np.abs(seg.rel_pose[:-1, 1][moving]).max() < 0.05
    # world yaw points along the direction of travel (x forward convention from hull.angle + pi/2)
    d = np.diff(seg.world_pose[:, :2].astype(np.float64), axis=0)[moving]
    heading = np.arctan2(d[:, 1], d[:, 0])
    err = (heading - seg.world_pose[:-1, 5][moving] + np.pi) % (2 * np.pi) - np.pi
    assert np.abs(err).max() < 0.05


def test_poor_pilot_leaves_track_steer_disengagement_then_takeover():
    src = GymSource(episodes=1, seconds=1.6, first_seed=0, policy_kwargs=dict(bias=1.0, gain=0.2),
                    takeover_seconds=0.5, **EXAMPLE)
    seg = src.make_item(0)
    idx = np.flatnonzero(seg.disengage)
    assert len(idx) >= 1 and (seg.disengage[idx] == Cause.STEER).all()
    first = idx[0]
    assert seg.engaged[: first + 1].all() and not seg.engaged[first + 1]  # the human takes over
    assert not seg.engaged[first + 1: first + 1 + 25].any()  # for at least takeover_seconds


def test_bad_plugin_paths_are_named():
    with pytest.raises(SourceError, match=r"'nope\.module:f'.*cannot import module 'nope\.module'"):
        import_path("nope.module:f")
    with pytest.raises(SourceError, match=r"has no attribute 'missing'"):
        GymSource(**{**EXAMPLE, "pose": "drivegpt.data.sources.gym_recorder:missing"})


def test_ingest_config_block_builds_the_car_racing_example(tmp_path):
    from drivegpt.stages.ingest import make_source
    from drivegpt.config import compose

    cfg = compose("data_ingest", ["experiment=tiny", "source=gym", "gym=car_racing", "segments=3", "seconds=0.3",
                                  "first_seed=7", f"run_dir={tmp_path}"])
    src = make_source(cfg)
    assert src.n_items == 3
    seg = src.make_item(2)
    assert seg.meta["seed"] == 9 and len(seg) == 15 and seg.frames.shape[1:] == (32, 64, 3)


def test_import_paths_of_the_old_layout_still_resolve():
    from drivegpt.data.sources.common import import_path
    from drivegpt.data.sources.gym_recorder import car_racing_pose

    assert import_path("data.sources.gym_recorder:car_racing_pose") is car_racing_pose
