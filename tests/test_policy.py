import pytest
import torch

from drivegpt.rl.checkpoint import load_policy, save_policy
from drivegpt.rl.policy import (Policy, PolicyConfig, PolicyInputError, count_flops, gaussian_kl,
                                gaussian_log_prob)

TINY = dict(context_frames=2, frame_height=32, frame_width=64, channels=[8, 16], frame_features=16,
            bottleneck_dim=16, hidden=32)


def clone(config: dict, frames, speed, cruise, target, steps: int = 150) -> Policy:
    """A policy (seed 0) cloned full batch onto normalized ``target`` actions [n 2]; returned in eval mode."""
    torch.manual_seed(0)
    p = Policy(config)
    opt = torch.optim.Adam(p.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, _ = p.compute_loss({"frames": frames, "speed": speed, "cruise": cruise, "target": target,
                                  "weight": torch.ones(len(frames))})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return p.eval()


def _obs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, 2, 32, 64, 3), dtype=torch.uint8, generator=g)
    return frames, torch.rand(b, generator=g) * 30


def test_shapes_and_action_range():
    torch.manual_seed(0)
    p = Policy(TINY)
    frames, speed = _obs()
    mean, log_std, value = p(frames, speed)
    assert mean.shape == (3, 2) and log_std.shape == (3, 2) and value.shape == (3,)
    a = p.act(frames, speed)
    assert a.shape == (3, 2) and a.abs().max() <= 1.0


def test_bottleneck_active_in_training_and_mean_at_export():
    torch.manual_seed(0)
    p = Policy(dict(TINY, noise_std=0.5))
    frames, speed = _obs()
    p.train()
    m1, _, _ = p(frames, speed)
    m2, _, _ = p(frames, speed)
    assert (m1 - m2).abs().max() > 1e-4, "bottleneck noise must perturb the action in training"
    # the same noise sample reproduces the same output (PPO re-evaluation relies on it)
    n = p.sample_noise(3)
    assert torch.equal(p(frames, speed, noise=n)[0], p(frames, speed, noise=n)[0])
    p.eval()
    e1, _, _ = p(frames, speed)
    e2, _, _ = p(frames, speed)
    assert torch.equal(e1, e2)
    exported = p.export_module()
    out = exported(frames[:1], speed[:1].reshape(1, 1))
    assert out.shape == (1, 2) and out.dtype == torch.float32
    assert torch.allclose(out, e1[:1], atol=1e-6)
    # exporting from a model in training mode still gives the noiseless mean
    p.train()
    assert torch.allclose(p.export_module()(frames[:1], speed[:1].reshape(1, 1)), e1[:1], atol=1e-6)
    assert p.bottleneck_bits == pytest.approx(16 * 0.5 * torch.log2(torch.tensor(5.0)).item())


def test_frozen_norm_keeps_bc_statistics_and_batch_independence():
    """RL freezes BatchNorm: a state's action must not depend on which other env steps share its
    batch (rollout vs PPO minibatch), and the running statistics from BC must not drift."""
    torch.manual_seed(0)
    p = Policy(TINY)
    frames, speed = _obs(b=4)
    p.train()
    n = p.sample_noise(4)
    full = p(frames, speed, noise=n)[0]
    alone = p(frames[:2], speed[:2], noise=n[:2])[0]
    assert (full[:2] - alone).abs().max() > 1e-5, "unfrozen train mode uses batch statistics"
    p.freeze_norm()
    assert p.training
    stats = {k: v.clone() for k, v in p.state_dict().items() if "running" in k}
    full = p(frames, speed, noise=n)[0]
    alone = p(frames[:2], speed[:2], noise=n[:2])[0]
    torch.testing.assert_close(full[:2], alone, rtol=0, atol=1e-6)
    assert not torch.equal(p(frames, speed)[0], p(frames, speed)[0]), "bottleneck noise stays on"
    p.train()  # train() again (PPO calls it every iteration) must not unfreeze
    p(frames, speed)
    count_flops(p)
    for k, v in p.state_dict().items():
        if "running" in k:
            assert torch.equal(v, stats[k]), f"{k} drifted while frozen"


def test_checkpoint_roundtrip_and_bad_inputs(tmp_path):
    torch.manual_seed(0)
    p = Policy(TINY).eval()
    path = save_policy(p, tmp_path / "policy.pt", meta={"stage": "bc"})
    q = load_policy(tmp_path)  # run dir form
    frames, speed = _obs()
    assert torch.equal(p(frames, speed)[0], q(frames, speed)[0])
    assert q.checkpoint_meta["stage"] == "bc"
    with pytest.raises(ValueError, match="observation shape"):
        load_policy(path, obs_shape=[4, 32, 64, 3])
    torch.save({"kind": "drivegpt-world-model"}, tmp_path / "wm.pt")
    with pytest.raises(ValueError, match="wm.pt: key 'kind'"):
        load_policy(tmp_path / "wm.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_policy(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_policy(tmp_path / "nope.pt")
    with pytest.raises(PolicyInputError, match="NaN"):
        q(frames, torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(PolicyInputError, match="shape"):
        q(torch.zeros(1, 3, 32, 64, 3, dtype=torch.uint8), torch.ones(1))
    with pytest.raises(PolicyInputError, match="uint8"):
        q(frames.float(), speed)


def test_flops_budget_at_full_resolution():
    p = Policy(PolicyConfig())
    f = count_flops(p, 128, 256)
    assert 1e6 < f["flops_per_frame"] <= 2.5e9
    assert f["flops_per_call"] > p.cfg.context_frames * f["flops_per_frame"]


def test_gaussian_helpers():
    m = torch.tensor([[0.1, -0.2]])
    ls = torch.tensor([[-1.0, 0.0]])
    d = torch.distributions.Normal(m, ls.exp())
    a = torch.tensor([[0.3, 0.4]])
    assert torch.allclose(gaussian_log_prob(a, m, ls), d.log_prob(a).sum(-1))
    m2, ls2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[-0.5, 0.2]])
    d2 = torch.distributions.Normal(m2, ls2.exp())
    assert torch.allclose(gaussian_kl(m, ls, m2, ls2), torch.distributions.kl_divergence(d, d2).sum(-1))


def test_cruise_set_speed_is_an_input_and_unknown_is_nan_or_none():
    torch.manual_seed(0)
    p = Policy(dict(TINY, cruise=True)).eval()
    for m in p.actor:  # a visible effect of the state features
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.5)
    frames, speed = _obs()
    slow, fast = torch.full((3,), 15.0), torch.full((3,), 30.0)
    a_slow, a_fast = p.act(frames, speed, deterministic=True, cruise=slow), p.act(frames, speed, deterministic=True, cruise=fast)
    assert (a_slow - a_fast).abs().max() > 1e-3
    unknown = p.act(frames, speed, deterministic=True)
    assert torch.equal(unknown, p.act(frames, speed, deterministic=True, cruise=torch.full((3,), float("nan"))))
    assert torch.equal(unknown, p.act(frames, speed, deterministic=True, cruise=torch.zeros(3)))
    # the exported module reads it the same way
    ex = p.export_module()
    assert torch.allclose(ex(frames[:1], speed[:1, None], fast[:1, None]), a_fast[:1], atol=1e-6)
    with pytest.raises(PolicyInputError, match="cruise"):
        p(frames, speed, torch.zeros(2))
    # a policy built without it ignores it (old checkpoints keep their two inputs)
    q = Policy(TINY).eval()
    assert torch.equal(q.act(frames, speed, deterministic=True, cruise=slow), q.act(frames, speed, deterministic=True))


def test_cloning_learns_to_close_the_gap_to_the_set_speed():
    """Identical frames: only the cruise set speed tells whether the logged driver accelerated
    (below it) or held speed. With it, BC's accel error falls well below the cruise-blind policy's."""
    g = torch.Generator().manual_seed(0)
    n = 64
    frames = torch.randint(0, 256, (1, 2, 32, 64, 3), dtype=torch.uint8, generator=g).expand(n, -1, -1, -1, -1)
    speed = 15.0 + 10.0 * torch.rand(n, generator=g)
    cruise = 15.0 + 10.0 * torch.rand(n, generator=g)
    target = torch.stack([torch.zeros(n), (0.1 * (cruise - speed)).clamp(-1, 1)], -1)
    errs = {}
    for use in (False, True):
        p = clone(dict(TINY, cruise=use), frames, speed, cruise, target)
        errs[use] = float((p.act(frames, speed, deterministic=True, cruise=cruise)[:, 1] - target[:, 1]).abs().mean())
    base = float((target[:, 1] - target[:, 1].mean()).abs().mean())
    assert errs[False] > 0.6 * base, errs  # blind to the set speed: about the spread of the targets
    assert errs[True] < 0.3 * errs[False], (errs, base)
