"""Handback start states: windows that end at the first engaged frame after a takeover, and the
share of the learned sim's episodes that start from them (``learned_sim.handback_fraction``)."""

import numpy as np
import pytest
import torch

from drivegpt.rl.selection import split_contexts
from drivegpt.sim.learned import LearnedSimConfig, WorldModelVectorEnv, pool_from_samples
from drivegpt.sim.learned.contexts import handback_starts
from drivegpt.sim.learned.testing import fake_samples, fake_setup

K, STRIDE = 3, 2


def samples_with_takeovers():
    """fake_samples, each segment disengaged over frames [10, 16) and [25, 28): two handbacks
    (frames 16 and 28); the human slows to 4 m/s while driving."""
    out = fake_samples(n_segments=4, T=40)
    for s in out:
        e = np.ones(40, bool)
        e[10:16] = False
        e[25:28] = False
        s["engaged"] = e
        s["speed"] = np.where(e, s["speed"], 4.0).astype(np.float32)
        s["disengage"] = np.zeros(40, np.int8)
        s["disengage"][[10, 25]] = 1
    return out


def test_handback_starts_end_at_the_first_engaged_frame():
    e = np.ones(40, bool)
    e[10:16] = False
    e[25:28] = False
    starts = handback_starts(e, K, STRIDE, n_keep=K)
    assert starts == [16 - (K - 1) * STRIDE, 28 - (K - 1) * STRIDE]
    for s in starts:
        last = s + (K - 1) * STRIDE
        assert e[last] and not e[last - 1]
    # a handback too early for a whole window, or too late for its future frames, is skipped
    assert handback_starts(e, 10, STRIDE, n_keep=10) == [28 - 9 * STRIDE]
    assert handback_starts(e, K, STRIDE, n_keep=K + 5) == [16 - (K - 1) * STRIDE]
    assert handback_starts(np.ones(40, bool), K, STRIDE, n_keep=K) == []
    # off the stride grid (token shards hold every stride-th frame): the next grid frame, if engaged
    odd = np.ones(40, bool)
    odd[10:17] = False
    odd[25:30] = False
    assert handback_starts(odd, K, STRIDE, n_keep=K) == [18 - (K - 1) * STRIDE, 30 - (K - 1) * STRIDE]
    brief = np.ones(40, bool)
    brief[10:17] = False
    brief[18:30] = False  # engaged at frame 17 only: no grid frame of that stretch is engaged
    assert handback_starts(brief, K, STRIDE, n_keep=K) == [30 - (K - 1) * STRIDE]


def test_pool_keeps_handback_windows_apart_from_engaged_ones():
    samples = samples_with_takeovers()
    plain = pool_from_samples(samples, K, STRIDE, lambda sid: "val")
    assert plain.handback is None and plain.handback_indices().numel() == 0
    pool = pool_from_samples(samples, K, STRIDE, lambda sid: "val", handbacks=8)
    back = pool.handback_indices()
    assert len(back) == 2 * len(samples)
    # the engaged windows are the ones the pool had without handbacks, in the same order
    rest = [i for i in range(len(pool)) if not bool(pool.handback[i])]
    assert torch.equal(pool.tokens[rest], plain.tokens)
    for i in back.tolist():
        # its last context frame is the handback: the human's slow driving before it
        assert pool.starts[i] + (K - 1) * STRIDE in (16, 28)
        assert float(pool.speed[i, K - 2]) == pytest.approx(4.0)
    # max_contexts caps the engaged windows; the handbacks of the segments read come on top
    small = pool_from_samples(samples, K, STRIDE, lambda sid: "val", max_contexts=3, handbacks=1)
    assert int((~small.handback).sum()) == 3 and int(small.handback.sum()) == len(set(small.segment_ids))
    # a subset and a split by segment carry the flags
    sel, rest_pool = split_contexts(pool)
    assert int(sel.handback.sum()) + int(rest_pool.handback.sum()) == len(back)
    sub = pool.subset(back.tolist())
    assert bool(sub.handback.all()) and sub.starts == [pool.starts[i] for i in back.tolist()]


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_handback_fraction_sets_the_share_of_episodes_starting_there(fraction):
    models, _, vehicle = fake_setup(context_frames=K, stride=STRIDE)
    pool = pool_from_samples(samples_with_takeovers(), K, STRIDE, lambda sid: "val", handbacks=8)
    env = WorldModelVectorEnv(400, models=models, contexts=pool, vehicle=vehicle, stride=STRIDE, max_steps=2,
                              termination="never", output="torch", handback_fraction=fraction)
    _, info = env.reset(seed=0)
    share = float(pool.handback[info["context_index"]].float().mean())
    assert share == pytest.approx(fraction, abs=0.08)
    if 0 < fraction < 1:  # both kinds are drawn across their whole sets
        idx = info["context_index"]
        assert len(set(idx[pool.handback[idx]].tolist())) == len(pool.handback_indices())
    # the episode's speed is the logged one at the handback
    back = pool.handback[info["context_index"]]
    if back.any():
        assert torch.allclose(env.core.veh[back, 0], pool.speed[info["context_index"][back], K - 1])


def test_handback_settings_are_checked_and_collected():
    with pytest.raises(ValueError, match="handback_fraction"):
        LearnedSimConfig(handback_fraction=1.5)
    with pytest.raises(ValueError, match="handbacks_per_segment"):
        LearnedSimConfig(handbacks_per_segment=-1)
    assert LearnedSimConfig(handback_fraction=0.0).pool_handbacks == 0
    assert LearnedSimConfig(handback_fraction=0.3, handbacks_per_segment=5).pool_handbacks == 5
