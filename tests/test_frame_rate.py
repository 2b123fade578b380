"""Issue 14: the log rate is a property of the data. Stages take data.fps from the shards'
meta.fps (data.fps: null, the default), refuse a configured rate that disagrees, and the world
model stores the rate it was really trained at."""

import numpy as np
import pytest

from drivegpt.config import compose
from drivegpt.data.shards import ShardError, write_shards
from drivegpt.stages.common import FrameRateMismatch, bind_fps


def token_item(i: int, fps: float) -> dict:
    """Token samples (vocab 16, grid 2x4) logged at ``fps``, driving straight at 10 m/s."""
    rng = np.random.default_rng(i)
    t = 16
    speed = np.full(t, 10.0, np.float32)
    rel = np.zeros((t, 6), np.float32)
    rel[:-1, 0] = speed[:-1] / fps
    meta = {"source": "synthetic-test", "segment_id": f"tok{i:04d}", "fps": fps,
            "camera": {"fx": 40.0, "fy": 40.0, "cx": 32, "cy": 16, "width": 64, "height": 32},
            "vehicle": {"wheelbase": 2.7}, "tokens": {"vocab_size": 16, "grid": [2, 4]}}
    dis = np.zeros(t, np.int8)
    dis[9 + i % 3] = 1 + i % 2  # a STEER or BRAKE takeover per segment
    return dict(tokens=rng.integers(0, 16, (t, 2, 4)).astype(np.int16), rel_pose=rel, speed=speed,
                world_pose=np.zeros((t, 6), np.float32), engaged=np.ones(t, bool),
                disengage=dis, times=np.arange(t) / fps, meta=meta)


@pytest.fixture
def shards_5hz(tmp_path):
    write_shards(tmp_path / "t5", 4, lambda i: token_item(i, 5.0), maxcount=2, progress=False)
    return tmp_path / "t5"


def test_default_config_follows_the_shards_rate(shards_5hz, tmp_path, caplog):
    cfg = compose("rollout", ["experiment=tiny", f"data.shards={shards_5hz}", "checkpoint=x",
                              f"run_dir={tmp_path / 'r'}"])
    assert cfg.data.fps is None  # null: follow the data
    with caplog.at_level("INFO"):
        assert bind_fps(cfg) == 5.0
    assert cfg.data.fps == 5.0 and cfg.learned_sim.fps == 5.0  # the learned sim steps at the log's rate
    assert any("meta.fps" in r.getMessage() for r in caplog.records)


def test_configured_rate_that_disagrees_is_refused_naming_both(shards_5hz, tmp_path):
    cfg = compose("train_world_model", ["experiment=tiny", f"data.shards={shards_5hz}", "data.fps=20",
                                        f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(FrameRateMismatch, match=r"data.fps=20 but the shards were logged at meta.fps=5 Hz "
                                                r"\(.*t5/shard-000000.tar: sample 'tok0000'\)"):
        bind_fps(cfg)


def test_shards_of_two_rates_are_refused(shards_5hz, tmp_path):
    write_shards(tmp_path / "t20", 2, lambda i: token_item(10 + i, 20.0), maxcount=2, progress=False)
    cfg = compose("train_world_model", ["experiment=tiny", f"data.shards=[{shards_5hz},{tmp_path / 't20'}]",
                                        f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(ShardError, match=r"disagree on meta.fps: 5 Hz .*; 20 Hz "):
        bind_fps(cfg)


def test_world_model_trained_on_5hz_shards_stores_their_rate_and_evals_on_a_small_fleet(shards_5hz, tmp_path,
                                                                                        capsys):
    from drivegpt.stages.eval_world_model import run as eval_run
    from drivegpt.stages.train_world_model import run
    from drivegpt.world_model import load_world_model

    cfg = compose("train_world_model", ["experiment=tiny", f"data.shards={shards_5hz}", "trainer.max_steps=2",
                                        "world_model.sample_rollouts=0", "data.val_fraction=0.0",
                                        f"run_dir={tmp_path / 'wm'}"])
    run(cfg)
    model = load_world_model(tmp_path / "wm")
    # tiny reads every 2nd frame: 5 Hz / 2 = 2.5 Hz (before: the config's 20 Hz / 2 = 10 Hz, exit 0)
    assert model.cfg.fps == pytest.approx(2.5)
    # a fleet too small for a held-out split: eval falls back to all windows, as eval tokenizer does
    # (before: ValueError "no held-out windows"), and says how many positives its AUROC rests on
    m = eval_run(compose("eval_world_model", ["experiment=tiny", f"data.shards={shards_5hz}", "data.val_fraction=0.0",
                                              f"checkpoint={tmp_path / 'wm'}", f"run_dir={tmp_path / 'ev'}"]))
    assert m["split"].startswith("all") and 0 < m["bits_per_token"] < 5
    out = capsys.readouterr().out
    assert "AUROC rests on STEER" in out and "positive frame(s) of the all" in out
