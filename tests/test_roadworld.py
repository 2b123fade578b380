"""Road world: config, determinism, env API, fleet segments, counterfactual replay."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from omegaconf import OmegaConf

import drivegpt.sim  # noqa: F401  (registers the envs)
from drivegpt.data.schema import Cause, validate
from drivegpt.sim.roadworld import RoadWorldConfig, RoadWorldEnv, drive_segment, replay

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sim" / "default.yaml"


def test_yaml_mirrors_dataclass_and_rejects_unknown_keys():
    d = OmegaConf.to_container(OmegaConf.load(CONFIG), resolve=False)
    d.pop("height"), d.pop("width")  # interpolated from data.frame_* in the composed config
    assert RoadWorldConfig.from_dict(d).to_dict() == RoadWorldConfig().to_dict()
    with pytest.raises(ValueError, match=r"sim\.safety\.min_tcc"):
        RoadWorldConfig.from_dict({"safety": {"min_tcc": 1.0}})
    cfg = RoadWorldConfig.from_dict({"safety": {"min_ttc": 1.5}}, height=32)
    assert cfg.safety.min_ttc == 1.5 and cfg.safety.max_jerk == 5.0 and cfg.height == 32


@pytest.fixture(scope="module")
def seg():
    return drive_segment(7, 4.0, None, 32, 64, quality=0.0)


def test_drive_segment_validates_and_fills_every_field(seg):
    validate(seg, fps=20)
    T = 80
    assert seg.frames.shape == (T, 32, 64, 3) and seg.extras["lane_mask"].shape == (T, 32, 64)
    assert seg.extras["traffic"].shape == (T, 6, 4) and seg.extras["traffic"].dtype == np.float32
    assert seg.extras["lane_mask"].any()
    assert seg.meta["segment_id"] == "proc_000007" and seg.meta["source"] == "procedural"
    assert seg.meta["camera"]["width"] == 64 and seg.meta["sim"]["seed"] == 7
    assert (seg.rel_pose[-1] == 0).all() and (seg.speed > 0).all()
    # rel_pose is consistent with the world poses (frame t+1 seen from frame t)
    wp = seg.world_pose.astype(np.float64)
    d = wp[1:, :2] - wp[:-1, :2]
    c, s = np.cos(wp[:-1, 5]), np.sin(wp[:-1, 5])
    fwd, left = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
    np.testing.assert_allclose(seg.rel_pose[:-1, 0], fwd, atol=2e-3)
    np.testing.assert_allclose(seg.rel_pose[:-1, 1], left, atol=2e-3)


def test_drive_segment_is_deterministic_per_seed(seg):
    again = drive_segment(7, 4.0, None, 32, 64, quality=0.0)
    assert np.array_equal(seg.frames, again.frames)
    for k, v in seg.arrays().items():
        assert np.array_equal(v, again.arrays()[k]), k
    other = drive_segment(8, 1.0, None, 32, 64)
    assert not np.array_equal(other.frames[:20], seg.frames[:20])


@pytest.fixture(scope="module")
def poor():
    return drive_segment(3, 20.0, None, 16, 32, quality=0.0)


def test_poor_autopilot_disengages_and_human_reengages(poor):
    s = poor
    events = np.flatnonzero(s.disengage)
    assert len(events) >= 1
    assert set(s.disengage[events].tolist()) <= {int(c) for c in Cause if c}
    t = events[0]
    # the human drives after the disengagement and hands back later
    assert not s.engaged[t + 1: t + 60].any() and s.engaged[t + 60:].any()
    assert len(s.meta["disengagements"]) == len(events)


def test_replay_of_logged_poses_reproduces_logged_frames(seg):
    k, n = 10, 40
    meta = json.loads(json.dumps(seg.meta))  # as read back from a shard's meta.json
    frames = replay(meta, seg.world_pose[k], seg.rel_pose[k:k + n], k, seg.extras["traffic"])
    ref = seg.frames[k + 1:k + 1 + n]
    assert frames.shape == ref.shape and frames.dtype == np.uint8
    diff = np.abs(frames.astype(int) - ref.astype(int))
    assert diff.mean() < 0.5 and (diff.max(-1) <= 8).mean() > 0.99
    # a counterfactual: 1 m further left at every step moves the lane markings right
    cf = seg.rel_pose[k:k + n].copy()
    cf[0, 1] += 1.0
    _, m_cf = replay(seg.meta, seg.world_pose[k], cf, k, seg.extras["traffic"], mask=True)
    _, m_lg = replay(seg.meta, seg.world_pose[k], seg.rel_pose[k:k + n], k, seg.extras["traffic"], mask=True)
    cols = lambda m: np.argwhere(m[:, 20:])[:, 2].mean()  # noqa: E731  (lower image rows)
    assert cols(m_cf) > cols(m_lg) + 1


def test_env_passes_check_env_and_gym_make():
    check_env(gym.make("drivegpt/RoadWorld-v0", height=32, width=64, seconds=3).unwrapped)
    env = gym.make("drivegpt/RoadWorld-v0", height=32, width=64, seconds=1)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (32, 64, 3) and obs["speed"].shape == (1,)
    assert obs["cruise"][0] == np.float32(env.unwrapped.world.road.speed_limit) > obs["speed"][0]
    assert set(info) >= {"world_pose", "rel_pose", "lane_offset", "cause"}
    steps = 0
    while True:
        obs, r, term, trunc, info = env.step(np.zeros(2, np.float32))
        steps += 1
        if term or trunc:
            break
    assert trunc and steps == 20 and r == 0.0
    assert info["rel_pose"][0] > 0.3  # it moved forward


def test_env_is_deterministic_under_reset_seed():
    def rollout(seed):
        env = RoadWorldEnv(height=32, width=64, seconds=2)
        obs, _ = env.reset(seed=seed)
        imgs = [obs["image"]]
        for i in range(15):
            obs, *_ = env.step(np.array([0.1 * np.sin(i), 0.1], np.float32))
            imgs.append(obs["image"])
        return np.stack(imgs)

    a, b, c = rollout(5), rollout(5), rollout(6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_composed_hydra_config_builds_the_world_config():
    from drivegpt.config import compose

    cfg = compose("fleet_generate", ["experiment=tiny", "sim.safety.min_ttc=1.5"])
    rw = RoadWorldConfig.from_dict(cfg.sim)
    assert (rw.height, rw.width, rw.seconds, rw.safety.min_ttc) == (32, 64, 10.0, 1.5)


def test_fleet_stats_counts_causes_per_100km(seg, poor):
    from drivegpt.sim.roadworld import fleet_stats

    st = fleet_stats([seg, poor])
    km = (seg.speed.sum() + poor.speed.sum()) / 20 / 1000
    assert abs(st["km"] - km) < 1e-3 and abs(st["hours"] - 24.0 / 3600) < 1e-9
    assert st["disengagements_total"] == int((seg.disengage != 0).sum() + (poor.disengage != 0).sum()) > 0
    assert abs(st["per_100km_total"] - 100 * st["disengagements_total"] / st["km"]) < 1e-6


def test_preview_writes_sheet_video_and_gif(seg, tmp_path):
    import cv2

    from drivegpt.sim.roadworld.preview import write_preview

    paths = write_preview(seg, tmp_path)
    sheet = cv2.imread(paths["png"])
    n_tiles = len(set(np.linspace(0, len(seg) - 1, 12).round().astype(int)) | set(np.flatnonzero(seg.disengage)))
    rows = -(-n_tiles // 3)
    assert sheet.shape == (rows * (14 + 128), 3 * 256, 3)  # 32x64 frames upscaled x4 + HUD bar
    cap = cv2.VideoCapture(paths["webm"])
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == len(seg)
    assert Path(paths["gif"]).stat().st_size > 0 and not list(tmp_path.glob(".*tmp*"))
