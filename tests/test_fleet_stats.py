"""The fleet summary's comfort envelope: the lateral acceleration of the engaged driving the safety
drivers accepted (no takeover within 2 s after), from the logged poses alone."""

import numpy as np

from drivegpt.data.inspect import fleet_summary
from synth_fleet import make_segment


def _with_lat(seg, lat):
    """Set the yaw of each move so that speed x yaw rate = lat (m/s^2) per frame."""
    dt = np.diff(seg.times)
    seg.rel_pose[:-1, 5] = (lat[:-1] * dt / seg.speed[:-1]).astype(np.float32)
    return seg


def test_envelope_reads_kept_engaged_frames_only():
    t = 400  # 20 s at 20 fps
    seg = make_segment(seed=0, t=t, frames=False, lane_mask=False, events={300: 1}, disengaged=(320, 360))
    lat = np.full(t, 1.0)
    lat[265:301] = 5.0  # the swerve the safety driver took over for (1.8 s before the event)
    lat[320:360] = 6.0  # the human drives: not the autopilot's envelope
    lat[::50] = -1.5    # a few firm turns the other way, kept
    s = fleet_summary([_with_lat(seg, lat)])
    assert abs(s["kept_lat_accel_p99"] - 1.5) <= 0.02, s["kept_lat_accel_p99"]
    assert abs(s["kept_lat_accel_p999"] - 1.5) <= 0.02
    # without the takeover, the swerve is accepted driving and sets the envelope
    seg2 = make_segment(seed=0, t=t, frames=False, lane_mask=False, disengaged=(320, 360))
    s2 = fleet_summary([_with_lat(seg2, lat)])
    assert abs(s2["kept_lat_accel_p99"] - 5.0) <= 0.02, s2["kept_lat_accel_p99"]
    assert fleet_summary([])["kept_lat_accel_p999"] is None
