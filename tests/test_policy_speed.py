"""``rl.policy.longitudinal: speed``: a head that never reads the speed outputs a desired speed v*,
and the accel is ``speed_gain (v* - v)``. A cloned accel head can ignore the car's own speed (the
proof's BC did: README "Policy", *Desired speed*); this one cannot."""

import math

import numpy as np
import pytest
import torch

from drivegpt.export import onnx_export as ox
from drivegpt.rl.checkpoint import load_policy, save_policy
from drivegpt.rl.policy import Policy, PolicyConfig, count_flops
from drivegpt.sim.vehicle import ACTION_SCALE
from test_policy import clone

TINY = dict(context_frames=2, frame_height=32, frame_width=64, channels=[8, 16], frame_features=16,
            bottleneck_dim=16, hidden=32, cruise=True, longitudinal="speed")


def _frames(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 2, 32, 64, 3), dtype=torch.uint8, generator=g)


def test_accel_closes_the_gap_to_a_desired_speed_that_ignores_the_speed():
    torch.manual_seed(0)
    p = Policy(TINY).eval()
    for m in p.speed_head:  # spread the desired speeds over the frames
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.5)
    frames, cruise = _frames(4), torch.full((4,), 25.0)
    z = p.features(frames)
    v_star = p.desired_speed(z, cruise)
    assert v_star.std() > 1e-4  # it reads the frames
    for v in (0.0, 10.0, 30.0):
        speed = torch.full((4,), v)
        mean, _, _ = p(frames, speed, cruise)
        assert torch.allclose(p.desired_speed(p.features(frames), cruise), v_star)  # blind to the speed
        want = torch.tanh((v_star - v) * p.cfg.speed_gain / ACTION_SCALE[1])
        assert torch.allclose(mean[:, 1], want, atol=1e-6)
    # slower -> more accel, faster -> less, per window
    a = torch.stack([p.act(frames, torch.full((4,), v), deterministic=True, cruise=cruise)[:, 1] for v in (5.0, 15.0, 25.0)])
    assert bool((a[0] > a[1]).all() and (a[1] > a[2]).all())
    # the set speed still reaches it; the curvature head is the actor's as before
    other = p.desired_speed(z, torch.full((4,), 10.0))
    assert (other - v_star).abs().max() > 1e-3
    assert p.actor[-1].out_features == 1 and count_flops(p)["flops_per_call"] > count_flops(Policy(dict(TINY, longitudinal="accel")))["flops_per_call"]


def test_config_checkpoint_and_errors(tmp_path):
    p = Policy(dict(TINY, speed_gain=0.8))
    q = load_policy(save_policy(p, tmp_path / "policy.pt"))
    assert q.cfg.longitudinal == "speed" and q.cfg.speed_gain == 0.8
    frames = _frames(3)
    args = (frames, torch.tensor([3.0, 12.0, 20.0]), torch.full((3,), 20.0))
    assert torch.equal(p.eval()(*args)[0], q.eval()(*args)[0])
    with pytest.raises(ValueError, match="rl.policy.longitudinal='brake'"):
        PolicyConfig(longitudinal="brake")
    with pytest.raises(ValueError, match="speed_gain"):
        PolicyConfig(longitudinal="speed", speed_gain=0.0)
    with pytest.raises(ValueError, match="desired_speed"):
        Policy(dict(TINY, longitudinal="accel")).desired_speed(torch.zeros(1, 16))


@pytest.mark.usefixtures("one_thread")
def test_cloned_near_the_flow_it_accelerates_back_from_far_below():
    """Logged driving only ever near each scene's flow speed (mostly easing off, as the fleet does):
    the speed head learns each scene's speed from its frames, so far below it -- a state the log
    never shows, like a handback at low speed -- the policy accelerates, and far above it brakes."""
    g = torch.Generator().manual_seed(0)
    scenes = torch.randint(0, 256, (3, 1, 2, 32, 64, 3), dtype=torch.uint8, generator=g)
    flow = torch.tensor([12.0, 18.0, 24.0])
    n = 36
    which = torch.arange(n) % 3
    frames = scenes[which, 0]
    speed = flow[which] + torch.empty(n).uniform_(-1.0, 1.0, generator=g)
    accel = (0.5 * (flow[which] - speed) - 0.2).clamp(-4, 4)  # the logged driver's accel, m/s^2
    target = torch.stack([torch.zeros(n), accel / ACTION_SCALE[1]], -1)
    cruise = torch.full((n,), 30.0)
    p = clone(TINY, frames, speed, cruise, target)
    v_star = p.desired_speed(p.features(scenes[:, 0]), torch.full((3,), 30.0))
    assert (v_star - (flow - 0.4)).abs().max() < 1.5, v_star  # each scene's speed, less the easing off
    slow = p.act(scenes[:, 0], flow - 8.0, deterministic=True, cruise=torch.full((3,), 30.0))[:, 1] * ACTION_SCALE[1]
    fast = p.act(scenes[:, 0], flow + 8.0, deterministic=True, cruise=torch.full((3,), 30.0))[:, 1] * ACTION_SCALE[1]
    assert bool((slow > 2.0).all()), slow  # ~0.5 x 8 m/s: back towards the flow
    assert bool((fast < -2.0).all()), fast


def export_case(p: Policy, path, n: int, lo: float, hi: float):
    """Export a K=3, 32x64 policy to fp32 ONNX at ``path`` and its inputs for n windows at speeds
    spread over [lo, hi] m/s: (onnx path, frames, speed [n 1], cruise [n 1], PyTorch's actions)."""
    module = p.export_module().eval()
    onnx_path = ox.export_onnx(module, (3, 32, 64, 3), path)
    g = np.random.default_rng(0)
    frames = g.integers(0, 256, (n, 3, 32, 64, 3), dtype=np.uint8)
    speed = np.linspace(lo, hi, n, dtype=np.float32)[:, None]
    cruise = np.full((n, 1), 25.0, np.float32)
    return onnx_path, frames, speed, cruise, ox.torch_actions(module, frames, speed, cruise)


@pytest.mark.usefixtures("one_thread")
def test_speed_policy_exports_with_parity(tmp_path):
    torch.manual_seed(0)
    cfg = dict(TINY, context_frames=3, channels=(8, 16, 16, 16), pool_grid=(2, 4))
    p = Policy(cfg).eval()
    torch.nn.init.normal_(p.speed_head[-1].weight, std=0.3)
    onnx_path, frames, speed, cruise, ref = export_case(p, tmp_path / "s.onnx", 6, 0.0, 30.0)
    got = ox.run_session(ox.cpu_session(onnx_path), frames, speed, cruise)
    assert np.abs(got - ref).max() <= 1e-4
    assert math.isclose(float(np.corrcoef(speed[:, 0], ref[:, 1])[0, 1]), -1.0, abs_tol=0.2)  # the speed is wired


@pytest.mark.usefixtures("one_thread")
def test_qdq_calibration_spreads_the_speed_so_far_gaps_are_not_clipped(tmp_path):
    """Calibration windows all logged near 15 m/s; deployed at 2 and 35 m/s the desired-speed
    policy's accel saturates. Calibrated on the log alone the QDQ graph clips that accel; with
    the speed spread (the default) it follows the fp32 graph."""
    from drivegpt.export.quantize import quantize_qdq

    torch.manual_seed(0)
    p = Policy(dict(TINY, context_frames=3, channels=(8, 16, 16, 16), pool_grid=(2, 4))).eval()
    module = p.export_module().eval()
    fp32 = ox.export_onnx(module, (3, 32, 64, 3), tmp_path / "s.onnx")
    g = np.random.default_rng(0)
    frames = g.integers(0, 256, (16, 3, 32, 64, 3), dtype=np.uint8)
    cruise = np.full((16, 1), 25.0, np.float32)
    logged = (15.0 + g.uniform(-1, 1, (16, 1))).astype(np.float32)
    test = np.where(np.arange(16)[:, None] % 2 == 0, 2.0, 35.0).astype(np.float32)
    ref = ox.torch_actions(module, frames, test, cruise)
    assert np.abs(ref[:, 1]).min() > 0.5  # far from v*: a large accel either way
    err = {}
    for sweep in (False, True):
        q = quantize_qdq(fp32, tmp_path / f"q{sweep}.onnx", frames, logged, cruise=cruise, speed_sweep=sweep)
        err[sweep] = float(np.abs(ox.run_session(ox.cpu_session(q), frames, test, cruise)[:, 1] - ref[:, 1]).max())
    assert err[True] < 0.02 and err[False] > 0.1, err
