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


def _with_accel(seg, accel):
    """Set the logged speed so that its accel is ``accel`` (m/s^2) per frame."""
    dt = np.diff(seg.times)
    seg.speed[:] = (12.0 + np.concatenate([[0.0], np.cumsum(accel[:-1] * dt)])).astype(np.float32)
    return seg


def test_jerk_envelope_reads_kept_engaged_frames_only():
    """The fleet's jerk (the accel's change over 0.25 s, from the logged speed): a triangle wave of
    accel at 2 m/s^3 is the accepted driving; an 8 m/s^3 surge just before a takeover and the
    human's 10 m/s^3 do not count, unless no takeover followed the surge."""
    t, fps = 800, 20.0
    k = np.arange(t)
    accel = 2.0 * (np.abs(((k / fps) % 2.0) - 1.0) - 0.5)  # +-1 m/s^2, slope +-2 m/s^3
    accel[560:580] = accel[559] + 8.0 * np.arange(1, 21) / fps  # a surge at 8 m/s^3 for 1 s ...
    accel[580:640] = accel[579]  # ... held through the takeover at frame 600 into the human's drive
    accel[640:700] = 10.0 * ((k[640:700] // 2) % 2)  # the human: 10 m/s^2 steps
    seg = make_segment(seed=0, t=t, frames=False, lane_mask=False, events={600: 2}, disengaged=(620, 720))
    s = fleet_summary([_with_accel(seg, accel)])
    assert 1.9 <= s["kept_jerk_p99"] <= 2.05 and 1.9 <= s["kept_jerk_p999"] <= 2.05, s
    seg2 = make_segment(seed=0, t=t, frames=False, lane_mask=False, disengaged=(620, 720))
    s2 = fleet_summary([_with_accel(seg2, accel)])
    assert s2["kept_jerk_p999"] >= 7.5, s2  # without the takeover the surge is accepted driving
    assert fleet_summary([])["kept_jerk_p999"] is None
