"""Issue 14, gym recorder: the log rate is the env's step rate (not its render rate), the logged
speed is cross-checked against the poses, adapters are checked naming their import path, and
the ingest config has no CarRacing defaults (they live in the gym=car_racing preset)."""

import gymnasium as gym
import numpy as np
import pytest

from drivegpt.config import compose
from drivegpt.data.sources.common import SourceError
from drivegpt.data.sources.gym_recorder import GymSource

SPEED = 10.0  # m/s


class StraightEnv(gym.Env):
    """Drives straight at SPEED; steps 0.2 s (5 Hz) but says it renders at 10 Hz."""

    metadata = {"render_fps": 10, "render_modes": ["rgb_array"]}
    step_seconds = 0.2

    def __init__(self, with_dt: bool = True):
        self.with_dt = with_dt
        self.observation_space = gym.spaces.Box(0, 255, (16, 32, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.x = 0.0

    @property
    def dt(self):
        if not self.with_dt:
            raise AttributeError("dt")
        return self.step_seconds

    def _obs(self):
        img = np.zeros((16, 32, 3), np.uint8)
        img[:, int(self.x) % 32] = 255
        return img

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0.0
        return self._obs(), {}

    def step(self, action):
        self.x += SPEED * self.step_seconds
        return self._obs(), 0.0, False, False, {}


gym.register(id="DriveGPTTest/Straight-v0", entry_point=StraightEnv)


class Idle:
    def __init__(self, seed=0, **kw):
        pass

    def act(self, env, obs):
        return np.zeros(1, np.float32)


def pose(env):
    return env.unwrapped.x, 0.0, 0.0, 0.0, 0.0, 0.0


def pose3(env):
    return env.unwrapped.x, 0.0, 0.0


def speed(env):
    return SPEED


def fine(env, obs, info):
    return 0


def returns_none(env, obs, info):
    return None


M = "test_gym_adapters"
BASE = dict(env_id="DriveGPTTest/Straight-v0", policy=f"{M}:Idle", pose=f"{M}:pose", speed=f"{M}:speed",
            disengage=f"{M}:fine", height=16, width=32, seconds=2.0)


def test_log_rate_is_the_step_rate_not_the_render_rate():
    seg = GymSource(**BASE).make_item(0)  # before: meta.fps 10 (render_fps) for a 5 Hz log
    assert seg.meta["fps"] == 5.0 and seg.meta["fps_from"] == "1 / env.unwrapped.dt"
    assert len(seg) == 10 and seg.times[1] == pytest.approx(0.2)
    np.testing.assert_allclose(seg.rel_pose[:-1, 0] * seg.meta["fps"], SPEED)  # poses agree with speed


def test_speed_cross_check_names_both_and_gym_fps_overrides():
    kw = dict(BASE, env_kwargs={"with_dt": False})  # only render_fps (10 Hz) to go by
    with pytest.raises(SourceError, match=r"logged speed \(gym.speed 'test_gym_adapters:speed'\) is 10.00 m/s.*"
                                          r"poses move 20.00 m/s at 10 Hz.*set gym.fps=5"):
        GymSource(**kw).make_item(0)
    seg = GymSource(**kw, fps=5).make_item(0)
    assert seg.meta["fps"] == 5.0 and seg.meta["fps_from"] == "gym.fps"


@pytest.mark.parametrize("override,message", [
    ({"pose": f"{M}:pose3"}, r"gym.pose 'test_gym_adapters:pose3' returned 3 values \(tuple\) at step 0; "
                             r"expected 6 numbers"),
    ({"disengage": f"{M}:returns_none"}, r"gym.disengage 'test_gym_adapters:returns_none' returned None "
                                         r"\(NoneType\) at step 0; expected an int cause code 0-3"),
    ({"policy": "drivegpt.data.sources.gym_recorder:CarRacingPilot"},
     r"gym.policy 'drivegpt.data.sources.gym_recorder:CarRacingPilot' raised AttributeError.*track.*"
     r"at step 0.*gym=car_racing"),
])
def test_bad_adapter_output_names_the_import_path_and_expectation(override, message):
    with pytest.raises(SourceError, match=message):  # before: IndexError / TypeError / AttributeError
        GymSource(**{**BASE, **override}).make_item(0)


def test_ingest_gym_block_is_generic_and_the_example_is_a_preset(tmp_path):
    from drivegpt.stages.ingest import make_source

    cfg = compose("data_ingest", ["experiment=tiny", "source=gym", f"run_dir={tmp_path}"])
    assert cfg.gym.takeover is None and dict(cfg.gym.policy_kwargs) == {}  # no CarRacing leftovers
    with pytest.raises(SourceError, match=r"gym.env_id, gym.policy, gym.pose, gym.disengage.*gym=car_racing"):
        make_source(cfg)
    cfg = compose("data_ingest", ["experiment=tiny", "source=gym", "gym=car_racing", f"run_dir={tmp_path}",
                                  "gym.policy_kwargs.noise=0.1"])  # a plain override, no ~/+ needed
    assert cfg.gym.env_id == "CarRacing-v3" and cfg.gym.policy_kwargs.noise == 0.1
    assert cfg.gym.policy_kwargs.bias == 0.3
    cfg = compose("data_ingest", ["experiment=tiny", "source=gym", f"run_dir={tmp_path}",
                                  "gym.env_id=DriveGPTTest/Straight-v0", f"gym.policy={M}:Idle",
                                  f"gym.pose={M}:pose", f"gym.disengage={M}:fine", "segments=1", "seconds=1"])
    seg = make_source(cfg).make_item(0)
    assert seg.meta["fps"] == 5.0 and seg.engaged.all()
