"""`drivegpt rollout` end to end on tiny real checkpoints and token shards."""

import json

import numpy as np
import pytest

from drivegpt.config import compose
from drivegpt.sim.learned.testing import fake_samples, tiny_checkpoints


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from drivegpt.data.shards import write_shards

    d = tmp_path_factory.mktemp("rollout")
    wm, _ = tiny_checkpoints(d / "models", vocab_size=16, context_frames=3, fps=10.0)
    samples = fake_samples(n_segments=8, T=40, vocab_size=16, grid=(2, 4))
    write_shards(d / "tokens", len(samples), samples.__getitem__, maxcount=4, progress=False)
    return d, str(wm), str(d / "tokens")


def test_rollout_writes_videos_curves_metrics(setup):
    from drivegpt.data.loaders import split_of
    from drivegpt.stages.rollout import run

    d, wm, tokens = setup
    out = d / "run_keep"
    cfg = compose("rollout", ["experiment=tiny", f"run_dir={out}", f"checkpoint={wm}",
                              f"data.shards={tokens}", "data.val_fraction=0.5", "driver=keep_lane",
                              "n=3", "horizon=0.5", "videos=2", "batch_size=2"])
    m = run(cfg)
    rows = json.loads((out / "rollouts.json").read_text())
    assert len(rows) == m["rollout/n"] == 3 and all(split_of(r["segment_id"], 0.5) == "val" for r in rows)
    for i in range(2):
        webm = out / "videos" / f"rollout_{i:03d}.webm"
        assert webm.stat().st_size > 0 and webm.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"  # EBML
        assert (out / "videos" / f"rollout_{i:03d}.gif").read_bytes()[:6] == b"GIF89a"
        assert (out / "curves" / f"rollout_{i:03d}.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "videos" / "rollout_002.gif").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    per100 = metrics["rollout/disengagements_per_100km"]
    assert set(per100) == {"STEER", "BRAKE", "GAS"}
    # per 100 km = expected events / km * 100, from the per-rollout rows
    km = sum(r["km"] for r in rows)
    assert km > 0
    np.testing.assert_allclose(per100["BRAKE"], sum(r["expected_disengagements"][1] for r in rows) / km * 100,
                               rtol=1e-6)
    assert 0 < metrics["rollout/mean_uncertainty"] <= np.log(16) + 1e-4
    # a 0.5 s dream at 10 Hz: 5 generated frames + the last context frame, side by side
    import cv2

    cap = cv2.VideoCapture(str(out / "videos" / "rollout_000.webm"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 6


def test_rollout_logged_driver_and_bad_driver(setup):
    from drivegpt.stages.rollout import run

    d, wm, tokens = setup
    cfg = compose("rollout", ["experiment=tiny", f"run_dir={d / 'run_logged'}", f"checkpoint={wm}",
                              f"data.shards={tokens}", "data.val_fraction=0.5", "driver=logged",
                              "n=2", "horizon=0.3", "videos=0"])
    m = run(cfg)
    # the logged driver drives the logged distance: 3 steps of the fake logs' ~0.5 m per frame
    assert m["rollout/n"] == 2 and 0.002 < m["rollout/km"] < 0.01
    bad = compose("rollout", ["experiment=tiny", f"run_dir={d / 'bad'}", f"checkpoint={wm}",
                              f"data.shards={tokens}", "driver=swerve"])
    with pytest.raises(ValueError, match="swerve"):
        run(bad)
