"""Disengagement targets and masks on hand-made cases."""

import numpy as np
import pytest

from drivegpt.data.labels import disengagement_targets


def test_event_window_is_half_open_after_t():
    times = np.arange(10) * 0.5  # 2 Hz
    dis = np.zeros(10, np.int8)
    dis[6] = 2  # BRAKE at t=3.0 s
    tg, mask = disengagement_targets(dis, np.ones(10, bool), times, horizons=(0.5, 1.0, 2.0))
    assert tg.shape == (10, 3, 3) and tg.dtype == np.float32 and mask.dtype == bool
    brake = tg[:, :, 1]
    # horizon 0.5 s: only frame 5 (3.0 in (2.5, 3.0]); the event frame itself is not in (t, t+h]
    np.testing.assert_array_equal(np.nonzero(brake[:, 0])[0], [5])
    np.testing.assert_array_equal(np.nonzero(brake[:, 1])[0], [4, 5])
    np.testing.assert_array_equal(np.nonzero(brake[:, 2])[0], [2, 3, 4, 5])
    assert tg[:, :, [0, 2]].sum() == 0  # other causes stay negative


def test_censoring_at_segment_end_and_not_engaged_masked():
    times = np.arange(10) * 0.5  # ends at 4.5 s
    dis = np.zeros(10, np.int8)
    dis[9] = 1  # STEER on the last frame
    engaged = np.ones(10, bool)
    engaged[2:4] = False  # the human drives at frames 2, 3
    tg, mask = disengagement_targets(dis, engaged, times, horizons=(1.0, 2.0))
    # horizon 2 s reaches past 4.5 s from t > 2.5 s (frames 6..9): censored unless the event is seen
    np.testing.assert_array_equal(mask[:, 1, 1], [1, 1, 0, 0, 1, 1, 0, 0, 0, 0])  # BRAKE: none seen
    np.testing.assert_array_equal(mask[:, 1, 0], [1, 1, 0, 0, 1, 1, 1, 1, 1, 0])  # STEER seen at 9
    np.testing.assert_array_equal(tg[:, 1, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1, 0])
    assert not mask[2:4].any()  # not engaged: nothing to predict
    assert mask[:, 0, 2].tolist() == [1, 1, 0, 0, 1, 1, 1, 1, 0, 0]  # 1 s horizon ends at 4.5 s: frame 7 ok


def test_horizon_in_seconds_with_irregular_times():
    times = np.array([0.0, 0.1, 0.15, 0.9, 1.0, 2.5])
    dis = np.array([0, 0, 0, 0, 3, 0], np.int8)  # GAS at 1.0 s
    tg, mask = disengagement_targets(dis, np.ones(6, bool), times, horizons=(1.0,))
    np.testing.assert_array_equal(tg[:, 0, 2], [1, 1, 1, 1, 0, 0])  # 0.0 + 1.0 includes 1.0
    assert mask[:, 0, 2].all() == False and mask[:5, 0, 2].all()  # last frame censored


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match="same length"):
        disengagement_targets(np.zeros(3, np.int8), np.ones(4, bool), np.arange(4.0))
