import math

import lightning as L
import torch
from torch import nn

from drivegpt.rl.ppo import PPOConfig, compute_gae, train_ppo


def test_gae_hand_computed():
    # one env, 3 steps, episode ends after step 1 (index 1); gamma 0.9, lambda 0.5
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[0.5], [1.0], [2.0]])
    d = torch.tensor([[False], [True], [False]])
    last = torch.tensor([4.0])
    adv, ret = compute_gae(r, v, d, last, gamma=0.9, lam=0.5)
    # t=2: delta = 3 + 0.9*4 - 2 = 4.6 ; A2 = 4.6
    # t=1: terminal: delta = 2 - 1 = 1.0 ; A1 = 1.0 (no propagation across the episode end)
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4 ; A0 = 1.4 + 0.9*0.5*1.0 = 1.85
    assert torch.allclose(adv[:, 0], torch.tensor([1.85, 1.0, 4.6]))
    assert torch.allclose(ret, adv + v)


class LaneToy:
    """1-D lane keeping, batched in torch: lateral offset y, heading psi; action[0] = curvature.

    y' = v psi, psi' = v kappa + gust; reward = 1 - (y/0.5)^2 per step (clipped at -1);
    terminated ("disengagement") when |y| > 1.5 m; truncated after 40 steps. SAME_STEP autoreset.
    action[1] (accel) is ignored.
    """

    def __init__(self, n, v=10.0, dt=0.1, kmax=0.2, horizon=40, device="cpu"):
        self.n, self.v, self.dt, self.kmax, self.horizon = n, v, dt, kmax, horizon
        self.g = torch.Generator(device=device)
        self.device = device

    def _init(self, mask):
        k = int(mask.sum())
        self.y[mask] = (torch.rand(k, generator=self.g) - 0.5) * 1.6
        self.psi[mask] = (torch.rand(k, generator=self.g) - 0.5) * 0.1
        self.t[mask] = 0

    def _obs(self):
        return {"state": torch.stack([self.y, self.psi * 10], -1)}

    def reset(self, seed=0):
        self.g.manual_seed(seed)
        self.y = torch.zeros(self.n)
        self.psi = torch.zeros(self.n)
        self.t = torch.zeros(self.n, dtype=torch.long)
        self._init(torch.ones(self.n, dtype=torch.bool))
        return self._obs()

    def step(self, action):
        kappa = action[:, 0].clamp(-1, 1) * self.kmax
        gust = torch.randn(self.n, generator=self.g) * 0.02
        self.psi = self.psi + self.dt * (self.v * kappa) + gust
        self.y = self.y + self.dt * self.v * torch.sin(self.psi)
        self.t += 1
        reward = (1 - (self.y / 0.5) ** 2).clamp(min=-1.0)
        term = self.y.abs() > 1.5
        trunc = (self.t >= self.horizon) & ~term
        done = term | trunc
        if done.any():
            self._init(done)
        return self._obs(), reward, term, trunc, {"uncertainty": torch.zeros(self.n)}


class MLPPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.pi = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))
        self.v = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1))
        self.log_std = nn.Parameter(torch.full((2,), -0.5))

    def forward(self, state, noise=None):
        return torch.tanh(self.pi(state)), self.log_std.expand(state.shape[0], 2), self.v(state).squeeze(-1)


def _evaluate(policy, episodes_env=64, seed=123):
    env = LaneToy(episodes_env)
    obs = env.reset(seed=seed)
    total = torch.zeros(episodes_env)
    alive = torch.ones(episodes_env, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(env.horizon):
            mean, _, _ = policy(**obs)
            obs, r, term, trunc, _ = env.step(mean)
            total += r * alive
            alive &= ~(term | trunc)
    return float(total.mean())


def test_ppo_solves_lane_keeping_toy():
    torch.manual_seed(0)
    policy = MLPPolicy()
    zero_policy_score = _evaluate(lambda state: (torch.zeros(state.shape[0], 2), None, None))
    before = _evaluate(policy)
    cfg = PPOConfig(num_envs=32, rollout_steps=40, iterations=25, epochs=4, minibatches=4, lr=3e-3,
                    gamma=0.95, kl_coef=0.0, target_kl=None, max_grad_norm=0.5)
    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true")
    hist = train_ppo(policy, LaneToy(cfg.num_envs), cfg, fabric=fabric, seed=0)
    after = _evaluate(policy)
    assert all(math.isfinite(h["loss"]) for h in hist)
    # the drifting (do-nothing) driver leaves the lane; a keeping policy scores near 40
    assert after > max(before, zero_policy_score) + 10, (before, zero_policy_score, after)
    assert after > 25, after
    assert hist[-1]["event_rate"] < hist[0]["event_rate"] + 1e-9


def test_kl_regulariser_keeps_policy_near_reference():
    torch.manual_seed(0)
    ref = MLPPolicy()
    cfg = PPOConfig(num_envs=16, rollout_steps=20, iterations=4, epochs=4, lr=3e-3, target_kl=None)
    far = MLPPolicy()
    far.load_state_dict(ref.state_dict())
    near = MLPPolicy()
    near.load_state_dict(ref.state_dict())
    h_far = train_ppo(far, LaneToy(16), PPOConfig(**{**cfg.__dict__, "kl_coef": 0.0}), ref_policy=ref, seed=1)
    h_near = train_ppo(near, LaneToy(16), PPOConfig(**{**cfg.__dict__, "kl_coef": 50.0}), ref_policy=ref, seed=1)
    assert h_near[-1]["kl_to_ref"] < h_far[-1]["kl_to_ref"]
