"""``rl.policy.max_lat_accel``: the comfort envelope on the curvature, |k| <= max_lat_accel / v^2 (as
openpilot's clip_curvature), part of the policy's graph so BC, RL, the closed loop and the exported
model all act through it."""

import math

import numpy as np
import pytest
import torch

from drivegpt.export import onnx_export as ox
from drivegpt.rl.checkpoint import load_policy, save_policy
from drivegpt.rl.policy import Policy, PolicyConfig
from drivegpt.sim.vehicle import ACTION_SCALE
from test_policy_speed import export_case

TINY = dict(context_frames=2, frame_height=32, frame_width=64, channels=[8, 16], frame_features=16,
            bottleneck_dim=16, hidden=32, cruise=True, longitudinal="speed")


def _frames(b, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, k, 32, 64, 3), dtype=torch.uint8, generator=g)


def _steering_hard(cfg):
    """A policy whose curvature spans the whole action range over random frames."""
    torch.manual_seed(0)
    p = Policy(cfg).eval()
    torch.nn.init.normal_(p.actor[-1].weight, std=3.0)
    return p


def test_curvature_stays_inside_the_lateral_accel_envelope():
    free = _steering_hard(TINY)
    env = _steering_hard(dict(TINY, max_lat_accel=2.0))
    env.load_state_dict(free.state_dict())
    frames, cruise = _frames(16), torch.full((16,), 25.0)
    for v in (3.0, 8.0, 15.0, 25.0, 35.0):
        speed = torch.full((16,), v)
        a_free = free(frames, speed, cruise)[0]
        a_env = env(frames, speed, cruise)[0]
        lat_free = v * v * a_free[:, 0].abs() * ACTION_SCALE[0]
        lat_env = v * v * a_env[:, 0].abs() * ACTION_SCALE[0]
        assert float(lat_env.max()) <= 2.0 + 1e-4, (v, lat_env.max())
        inside = lat_free <= 2.0
        assert torch.allclose(a_env[inside, 0], a_free[inside, 0])  # untouched where it already fits
        assert torch.allclose(a_env[:, 1], a_free[:, 1])  # the accel is the speed head's as before
        if v >= 15.0:
            assert bool((lat_free > 2.5).any())  # without it this policy would exceed it
            # clipped to the bound, keeping the side it turns to
            out = ~inside
            assert torch.allclose(lat_env[out], torch.full_like(lat_env[out], 2.0), atol=1e-4)
            assert bool((torch.sign(a_env[out, 0]) == torch.sign(a_free[out, 0])).all())
    # at 3 m/s the full curvature range is under 2 m/s^2: nothing is clipped
    assert torch.equal(env(frames, torch.full((16,), 3.0), cruise)[0], free(frames, torch.full((16,), 3.0), cruise)[0])


def test_envelope_config_checkpoint_and_errors(tmp_path):
    assert PolicyConfig().max_lat_accel is None
    p = Policy(dict(TINY, max_lat_accel=2.4))
    q = load_policy(save_policy(p, tmp_path / "policy.pt"))
    assert q.cfg.max_lat_accel == 2.4
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rl.policy.max_lat_accel"):
            PolicyConfig(max_lat_accel=bad)


@pytest.mark.usefixtures("one_thread")
def test_envelope_exports_and_quantizes_with_the_bound(tmp_path):
    """fp32 ONNX equals PyTorch; the 8-bit QDQ graph keeps the bound at highway speed (where it is
    ~5% of the curvature's range) to a few percent of it."""
    from drivegpt.export.quantize import quantize_qdq

    cfg = dict(TINY, context_frames=3, channels=(8, 16, 16, 16), pool_grid=(2, 4), max_lat_accel=2.0)
    fp32, frames, speed, cruise, ref = export_case(_steering_hard(cfg), tmp_path / "e.onnx", 32, 2.0, 35.0)
    assert np.abs(ox.run_session(ox.cpu_session(fp32), frames, speed, cruise) - ref).max() <= 1e-4
    bound = 2.0 / ACTION_SCALE[0] / speed[:, 0] ** 2
    assert (np.abs(ref[:, 0]) >= bound - 1e-5).sum() >= 8  # the envelope binds in this sample
    q = quantize_qdq(fp32, tmp_path / "q.onnx", frames, speed, cruise=cruise)
    got = ox.run_session(ox.cpu_session(q), frames, speed, cruise)
    fast = speed[:, 0] > 20.0
    lat = speed[fast, 0] ** 2 * np.abs(got[fast, 0]) * ACTION_SCALE[0]
    assert lat.max() <= 2.0 * 1.1, lat  # the bound survives quantization (within 10%)
    assert math.isclose(float(np.abs(got[:, 0] - ref[:, 0]).max()), 0.0, abs_tol=0.02)
