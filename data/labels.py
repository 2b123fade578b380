"""Disengagement labels: "does the safety driver take over for cause c within h seconds?".

For frame t, horizon h and cause c (STEER, BRAKE, GAS = columns 0, 1, 2):

- target[t, h, c] = 1 if a disengagement with cause c happens at a frame j with
  times[t] < times[j] <= times[t] + h (the event at t itself belongs to the move into t);
- mask[t, h, c] = False (ignore in loss and metrics) where the label is unknown or undefined:
  * censored: times[t] + h is past the last frame and no cause-c event was seen in (t, end];
  * the autopilot is not engaged at t (the human drives; no disengagement can happen).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from drivegpt.data.schema import Cause

N_CAUSES = len(Cause) - 1
DEFAULT_HORIZONS = (0.5, 1.0, 2.0, 4.0)


def disengagement_targets(disengage: np.ndarray, engaged: np.ndarray, times: np.ndarray,
                          horizons: Sequence[float] = DEFAULT_HORIZONS) -> tuple[np.ndarray, np.ndarray]:
    """disengage int [T], engaged bool [T], times float [T] -> (targets float32 [T,H,3], mask bool [T,H,3])."""
    disengage = np.asarray(disengage)
    engaged = np.asarray(engaged, dtype=bool)
    times = np.asarray(times, dtype=np.float64)
    t = len(times)
    if not (len(disengage) == len(engaged) == t):
        raise ValueError(f"disengage ({len(disengage)}), engaged ({len(engaged)}) and times ({t}) "
                         "must have the same length")
    hz = np.asarray(horizons, dtype=np.float64)
    # counts[c, i] = number of cause-(c+1) events in frames 0..i-1
    events = np.stack([disengage == c for c in range(1, N_CAUSES + 1)])  # [3, T]
    counts = np.concatenate([np.zeros((N_CAUSES, 1), np.int64), np.cumsum(events, axis=1)], axis=1)
    # last frame index inside (t, t+h]: end[t, h]
    eps = 1e-9  # times are float: an event exactly h later counts
    end = np.searchsorted(times, times[:, None] + hz[None, :] + eps, side="right") - 1  # [T, H]
    idx = np.arange(t)
    n_events = counts[:, end + 1] - counts[:, idx + 1][:, :, None]  # [3, T, H]
    targets = np.moveaxis(n_events > 0, 0, -1)  # [T, H, 3]
    observed = (times[:, None] + hz[None, :] <= times[-1] + eps)  # [T, H] horizon inside the log
    mask = (observed[:, :, None] | targets) & engaged[:, None, None]
    return targets.astype(np.float32), mask
