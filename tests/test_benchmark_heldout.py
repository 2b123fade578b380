"""The tokenizer benchmark scores a checkpoint on segments no fleet trained on (issue 16)."""

import importlib.util
from pathlib import Path

from drivegpt.data.loaders import split_of
from drivegpt.sim.roadworld.fleet import segment_id


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tokenizer_quality.py"
    spec = importlib.util.spec_from_file_location("tokenizer_quality", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tokenizer_benchmark_holds_out_by_the_fleets_own_split():
    b = _bench()
    seeds = b.held_out_seeds(6)
    assert len(set(seeds)) == 6
    for s in seeds:
        assert s >= b.HELD_OUT_FIRST_SEED  # beyond every fleet's seeds (fleets use 0..)
        assert split_of(segment_id(s), 0.1) == "val"  # and held out by the split the stages use
    # the ids the split is computed on are the fleet's own (proc_NNNNNN), not another naming
    assert segment_id(seeds[0]).startswith("proc_")


def test_tokenizer_benchmark_dev_frames_are_the_dev_seeds_every_kth_frame():
    """Designs are chosen on the dev seeds (``--dev``): consecutive from DEV_FIRST_SEED, past the
    held-out seeds the evaluation draws from, every ``every``-th frame of each segment."""
    import numpy as np

    from drivegpt.sim.roadworld import drive_segment

    b = _bench()
    assert b.DEV_FIRST_SEED > max(b.held_out_seeds(200))
    frames, masks = b.road_world("dev", 2, 1.0, 32, 64, every=4)
    segs = [drive_segment(s, 1.0, None, 32, 64) for s in (b.DEV_FIRST_SEED, b.DEV_FIRST_SEED + 1)]
    assert np.array_equal(frames, np.concatenate([s.frames[::4] for s in segs]))
    assert np.array_equal(masks, np.concatenate([s.extras["lane_mask"][::4] for s in segs]))
