"""``rl.policy.max_jerk``: the longitudinal comfort envelope of the policy's controls. At each decision
the accel command stays within max_jerk x tau_accel of the car's accel (``sim.vehicle.limit_jerk``),
applied by every runner: the closed loop, the learned sim's env for RL and keep-the-best."""

import numpy as np
import pytest
import torch

from drivegpt.rl.checkpoint import load_policy, save_policy
from drivegpt.rl.policy import Policy, PolicyConfig
from drivegpt.sim import vehicle as V

TINY = dict(context_frames=2, frame_height=32, frame_width=64, channels=[8], pool_grid=[1, 2],
            frame_features=8, bottleneck_dim=8, hidden=8)


def _drive(commands, max_jerk=None, substeps=4, dt=0.05):
    """Accel [n] of a car driven by one command per decision, held ``substeps`` steps."""
    state, accels = V.initial_state(np.array(15.0)), []
    for a in commands:
        act = np.array([0.1, a])
        if max_jerk is not None:
            act = V.limit_jerk(act, state[2], max_jerk)
            assert act[0] == 0.1  # the curvature passes unchanged
        for _ in range(substeps):
            state, _ = V.step(state, act, dt)
            accels.append(float(state[2]))
    return np.array(accels)


def _window_jerk(accels, dt=0.05, window=5):
    return np.abs(accels[window:] - accels[:-window]) / (window * dt)


def test_limit_keeps_the_cars_jerk_under_the_bound_and_still_gets_there():
    """A command that jumps from full throttle to full braking and back: the bare car's jerk over
    0.25 s windows is ~5x the bound; through the limit it stays under it, and a held command is
    still reached, one bounded step per decision."""
    cmds = [0.0] * 3 + [-1.0] * 15 + [1.0] * 15
    bare = _window_jerk(_drive(cmds))
    assert bare.max() > 20.0
    limited = _drive(cmds, max_jerk=4.9)
    assert _window_jerk(limited).max() <= 4.9 + 1e-9
    assert limited[3 * 4 + 15 * 4 - 1] == pytest.approx(-4.0, abs=0.05)  # full braking reached in 3 s
    assert limited[-1] == pytest.approx(4.0, abs=0.05)
    assert limited[3 * 4 + 3] > -1.0  # ... but not in the first decision: 0.98 m/s^2 at most
    # torch and numpy agree, per row of a batch
    a = torch.tensor([[0.2, -1.0], [0.0, 1.0], [0.0, 0.1]])
    now = torch.tensor([0.0, 3.5, 0.0])
    got = V.limit_jerk(a, now, 5.0)
    assert torch.allclose(got, torch.tensor([[0.2, -1.0 / 4], [0.0, 1.0], [0.0, 0.1]]))
    np.testing.assert_allclose(V.limit_jerk(a.numpy(), now.numpy(), 5.0), got.numpy(), atol=1e-7)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_jerk"):
            V.limit_jerk(a, now, bad)


def test_policy_controls_config_and_checkpoint(tmp_path):
    assert PolicyConfig().max_jerk is None
    free = Policy(TINY)
    a, now = torch.tensor([[0.3, -1.0]]), torch.tensor([1.0])
    assert torch.equal(free.controls(a, now), a)  # no envelope: the action as it is
    p = Policy(dict(TINY, max_jerk=4.9))
    q = load_policy(save_policy(p, tmp_path / "policy.pt"))
    assert q.cfg.max_jerk == 4.9
    assert torch.allclose(q.controls(a, now), torch.tensor([[0.3, (1.0 - 0.98) / 4]]))
    for bad in (0.0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="rl.policy.max_jerk"):
            PolicyConfig(max_jerk=bad)


class _Jerky(Policy):
    """Flips its accel between +-2.4 m/s^2 every other decision (the frames do not matter)."""

    def act(self, frames, speed, deterministic=False, generator=None, cruise=None):
        self.calls = getattr(self, "calls", 0) + 1
        return torch.tensor([[0.0, 0.6 if (self.calls // 2) % 2 else -0.6]]).expand(len(speed), 2)


def test_closed_loop_drives_through_the_envelope():
    """The closed loop sends the car the policy's ``controls``: a policy that flips its accel at
    other decision is taken over for jerk without the envelope and never with it."""
    from drivegpt.config import compose
    from drivegpt.rl.evaluate import drive
    from drivegpt.rl.metrics import closed_loop_metrics

    cfg = compose("eval_policy", ["experiment=tiny", "sim.safety.max_lane_offset=5.0",
                                  "sim.safety.max_heading_error=3.0"])  # 32x64 at 20 Hz; only comfort rules
    seeds = [1_000_000, 1_000_001]
    rows = {}
    for max_jerk in (None, 4.9):
        torch.manual_seed(0)
        rows[max_jerk] = closed_loop_metrics(drive("p", seeds, 8.0, cfg.sim, _Jerky(dict(TINY, max_jerk=max_jerk)),
                                                   stride=2))
    assert rows[None].get("rule_jerk", 0) >= 2, rows[None]
    assert rows[4.9].get("rule_jerk", 0) == 0, rows[4.9]
    assert rows[4.9]["jerk_p99"] <= 4.9 < rows[None]["jerk_p99"]


def test_learned_sim_env_applies_the_envelope_against_the_cars_accel():
    """RL's env (``make_learned_env(..., max_jerk=)``) clips each action against the sim car's accel:
    full braking from the logged accel moves the car's accel by what 0.98 m/s^2 of command gives."""
    from drivegpt.rl.envs import FrameHistoryVecEnv, make_learned_env
    from drivegpt.sim.learned.testing import fake_setup

    m, pool, v = fake_setup(context_frames=3, stride=2)
    after = {}
    for max_jerk in (None, 4.9):
        env = make_learned_env(4, 2, dict(stride=2, max_steps=5, termination="never"), max_jerk=max_jerk,
                               models=m, contexts=pool, vehicle=v)
        env.reset(seed=1)
        before = env.env.core.veh[:, 2].clone()
        env.step(torch.tensor([[0.0, -1.0]] * 4))
        after[max_jerk] = env.env.core.veh[:, 2] - before
    lag = 1 - np.exp(-2 * (1 / 20) / 0.2)  # two 20 Hz sub-steps through tau_accel = 0.2 s
    assert float(after[4.9].min()) >= -0.98 * lag - 1e-4
    assert float(after[None].max()) < -0.98 * lag - 0.1  # without it the car brakes harder at once
    with pytest.raises(ValueError, match="max_jerk"):
        FrameHistoryVecEnv(object(), 2, max_jerk=4.9)


def test_export_tells_the_car_what_its_controls_apply():
    """The envelope is not in the exported graph (it reads the car's accel): the export's manifest and
    device report carry it as a controls rule, with the step it allows."""
    from drivegpt.export.export import controls_spec

    assert controls_spec(Policy(TINY).export_module()) == {}
    spec = controls_spec(Policy(dict(TINY, max_jerk=4.9)).export_module())
    assert spec["max_jerk"] == 4.9 and spec["tau_accel"] == V.VehicleParams().tau_accel
    assert "+- 0.98 m/s^2" in spec["rule"]


def test_rollout_policy_driver_sends_the_car_the_policys_controls():
    """``drivegpt rollout driver=policy``: the dreamed drive goes through ``Policy.controls`` too, against
    the sim car's accel, so full braking builds up one bounded step a decision."""
    from drivegpt.sim.learned import LearnedSimConfig
    from drivegpt.sim.learned.contexts import pool_from_samples
    from drivegpt.sim.learned.core import SimCore
    from drivegpt.sim.learned.rollout import rollout_batch
    from drivegpt.sim.learned.testing import fake_samples, fake_setup

    m, _, v = fake_setup(context_frames=3, stride=2)
    pool = pool_from_samples(fake_samples(n_segments=4, T=40), 3, 2, lambda sid: "val", future=4)

    class Braking(Policy):
        def act(self, frames, speed, deterministic=False, generator=None, cruise=None):
            return torch.tensor([[0.0, -1.0]]).expand(frames.shape[0], 2)

    accel = {}
    for max_jerk in (None, 4.9):
        core = SimCore(LearnedSimConfig(stride=2, temperature=0.0, termination="never", max_steps=10), m, pool, 2, v)
        start = None
        policy = Braking(dict(TINY, max_jerk=max_jerk))
        orig = policy.controls

        def controls(a, now, orig=orig):
            nonlocal start
            start = now.clone() if start is None else start
            return orig(a, now)

        policy.controls = controls
        rollout_batch(core, pool, torch.tensor([0, 1]), 1, "policy", policy=policy)
        accel[max_jerk] = core.veh[:, 2] - start
    lag = 1 - np.exp(-2 * (1 / 20) / 0.2)
    assert torch.allclose(accel[4.9], torch.full((2,), -0.98 * lag), atol=1e-4)
    assert bool((accel[None] < -0.98 * lag - 0.1).all())
