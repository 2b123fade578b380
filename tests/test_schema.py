import numpy as np
import pytest

from drivegpt.data.schema import Cause, Segment, SegmentError, validate


def make_segment(t=10, h=8, w=16, fps=20.0):
    return Segment(
        frames=np.zeros((t, h, w, 3), np.uint8),
        rel_pose=np.zeros((t, 6), np.float32),
        world_pose=np.zeros((t, 6), np.float32),
        speed=np.full(t, 10.0, np.float32),
        engaged=np.ones(t, bool),
        disengage=np.zeros(t, np.int8),
        times=np.arange(t, dtype=np.float64) / fps,
        meta={"source": "test", "segment_id": "seg_0", "fps": fps, "camera": {}, "vehicle": {}},
    )


def test_valid_segment_passes():
    seg = make_segment()
    seg.disengage[5] = Cause.STEER
    assert validate(seg, fps=20.0) is seg


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda s: setattr(s, "speed", s.speed.astype(np.float64)), "speed", "dtype"),
        (lambda s: setattr(s, "rel_pose", s.rel_pose[:5]), "rel_pose", "length"),
        (lambda s: setattr(s, "rel_pose", np.zeros((10, 3), np.float32)), "rel_pose", "shape"),
        (lambda s: s.world_pose.__setitem__((3, 1), np.nan), "world_pose", "NaN"),
        (lambda s: s.times.__setitem__(4, 0.0), "times", "increasing"),
        (lambda s: setattr(s, "times", s.times * 2), "times", "frame rate"),
        (lambda s: s.meta.pop("camera"), "meta", "camera"),
        (lambda s: s.meta.update(segment_id="a.b"), "meta.segment_id", "dots"),
        (lambda s: s.disengage.__setitem__(2, 9), "disengage", "unknown"),
        (lambda s: (s.engaged.__setitem__(2, False), s.disengage.__setitem__(2, 1)), "disengage", "not engaged"),
        (lambda s: setattr(s, "frames", np.zeros((10, 8, 16), np.uint8)), "frames", "shape"),
        (lambda s: s.extras.update(lane_mask=np.zeros((3, 8, 16), bool)), "extras.lane_mask", "leading"),
        (lambda s: s.meta.update(cruise_speed=-3.0), "meta.cruise_speed", "> 0"),
        (lambda s: s.meta.update(cruise_speed="fast"), "meta.cruise_speed", "m/s"),
        (lambda s: s.meta.update(cruise_speed=float("nan")), "meta.cruise_speed", "finite"),
    ],
)
def test_bad_segments_name_segment_and_field(mutate, field, words):
    seg = make_segment()
    mutate(seg)
    with pytest.raises(SegmentError) as e:
        validate(seg, where="shard-000.tar")
    msg = str(e.value)
    assert "shard-000.tar" in msg and seg.meta["segment_id"] in msg and f"'{field}'" in msg and words in msg


def test_fps_mismatch():
    with pytest.raises(SegmentError, match="expected 5"):
        validate(make_segment(), fps=5.0)
