"""Keep-the-best RL (rl/selection.py): held-out contexts, common random numbers, never worse than BC."""

import pytest
import torch

from drivegpt.rl.policy import Policy, PolicyConfig
from drivegpt.rl.selection import KeepBest, scoring_env, sim_score, split_contexts
from drivegpt.sim.learned.testing import fake_setup


def _core_and_policy():
    from drivegpt.sim.learned.core import SimCore
    from drivegpt.sim.learned.config import LearnedSimConfig

    models, pool, veh = fake_setup(context_frames=3, stride=2)
    cfg = LearnedSimConfig(stride=2, max_steps=6)
    core = SimCore(cfg, models, pool, 4, veh)
    torch.manual_seed(0)
    pol = Policy(PolicyConfig(context_frames=2, frame_height=32, frame_width=64, channels=(8, 8),
                              extra_blocks=0, pool_grid=(1, 2), frame_features=8, bottleneck_dim=8, hidden=16))
    return core, pool, pol


def test_split_contexts_by_segment_disjoint():
    _, pool, _ = _core_and_policy()
    sel, rest = split_contexts(pool)
    assert len(sel) + len(rest) == len(pool)
    assert not set(sel.segment_ids) & set(rest.segment_ids)


def test_sim_score_common_random_numbers():
    core, pool, pol = _core_and_policy()
    sel, _ = split_contexts(pool)
    env = scoring_env(core, 4, sel, pol.cfg.context_frames)
    a = sim_score(pol, env, seed=7, steps=5)
    b = sim_score(pol, env, seed=7, steps=5)
    assert a == b  # same seed, same policy: the same number, to the bit
    assert a["km"] > 0 and 0 <= a["event_prob"] <= 1


def test_keep_best_never_ships_worse_than_bc():
    core, pool, bc = _core_and_policy()
    sel, _ = split_contexts(pool)
    env = scoring_env(core, 4, sel, bc.cfg.context_frames)
    kb = KeepBest()
    kb.offer(-1, bc, sim_score(bc, env, seed=3, steps=5))
    worse = Policy(bc.cfg)
    worse.load_state_dict(bc.state_dict())
    with torch.no_grad():  # swerve hard: the fake world model's hazard rises with lateral motion
        worse.actor[-1].bias.copy_(torch.tensor([3.0, -3.0]))
    s = sim_score(worse, env, seed=3, steps=5)
    assert s["predicted_per_100km"] > kb.best_score
    assert not kb.offer(0, worse, s)
    assert kb.best_iteration == -1
    shipped = Policy(bc.cfg)
    shipped.load_state_dict(kb.best_state)
    assert all(torch.equal(shipped.state_dict()[k], v) for k, v in bc.state_dict().items())


def test_keep_best_ships_an_iterate_only_past_the_margin():
    """rl.select.margin: a gain within the learned sim's noise does not replace BC."""
    bc = Policy(PolicyConfig.from_dict({"context_frames": 2, "channels": [4, 8], "frame_height": 32,
                                        "frame_width": 64}))
    kb = KeepBest(margin=0.02)
    assert kb.offer(-1, bc, {"predicted_per_100km": 375.3})
    assert not kb.offer(0, bc, {"predicted_per_100km": 374.5})  # 0.2% better: noise
    assert kb.best_iteration == -1
    assert kb.offer(1, bc, {"predicted_per_100km": 360.0})  # 4% better
    assert kb.best_iteration == 1 and kb.best_score == 360.0


def test_frame_history_context_cache_equals_fresh_decode():
    """Episode starts read each start window's decoded frames from a cache: same pixels as decoding."""
    from drivegpt.rl.envs import FrameHistoryVecEnv
    from drivegpt.sim.learned import WorldModelVectorEnv

    models, pool, veh = fake_setup(context_frames=3, stride=2)
    venv = WorldModelVectorEnv(4, models=models, contexts=pool, vehicle=veh, stride=2, max_steps=2,
                               termination="never", output="torch", autoreset_mode="same_step")
    env = FrameHistoryVecEnv(venv, 2)
    obs = env.reset(seed=0)
    all_ = torch.ones(4, dtype=torch.bool)
    assert torch.equal(obs["frames"], env._decode_last(venv.core, all_))
    for _ in range(6):  # episodes of 2 steps: three rounds of resets
        obs, _, _, trunc, _ = env.step(torch.zeros(4, 2))
        if bool(trunc.any()):
            assert torch.equal(obs["frames"][trunc], env._decode_last(venv.core, trunc))
    assert len(env._cache) >= 1


def _noise(g, sd, n=32):
    """Zero-mean noise of exactly this sample sd (the tests' z values do not hang on a draw)."""
    x = g.normal(0, 1, n)
    x -= x.mean()
    return x * (sd / x.std(ddof=1))


def _envs(rates, km=None):
    """Per-env scores with these events per km (1 km each unless given)."""
    km = [1.0] * len(rates) if km is None else km
    return {"env_events": [r * k for r, k in zip(rates, km)], "env_km": list(km),
            "predicted_per_100km": 100.0 * sum(r * k for r, k in zip(rates, km)) / sum(km)}


def test_paired_z_reads_the_spread_of_paired_differences():
    import math

    import numpy as np

    from drivegpt.rl.selection import paired_z

    g = np.random.default_rng(0)
    base = g.uniform(2.0, 6.0, 32)  # envs differ a lot; CRN pairs them
    steady = _envs(base * 0.97)  # every env 3% lower: the pairing makes that certain
    noisy = _envs(base * 0.97 + _noise(g, 1.0))  # 3% lower on average (~0.12), env noise 1.0
    assert paired_z(_envs(base), steady) > 10
    z = paired_z(_envs(base), noisy)
    assert 0 < z < 1.5, z  # ~0.12 / (1.0 / sqrt(32))
    # agrees with the z of a plain paired t on per-km rates when every env drives the same km
    d = base - np.asarray(noisy["env_events"])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(32))
    assert math.isclose(z, t, rel_tol=1e-9)
    assert paired_z(_envs(base), _envs(base * 1.05 + _noise(g, 0.01))) < -5  # worse: negative
    with pytest.raises(ValueError, match="same >= 2 envs"):
        paired_z(_envs(base), _envs(base[:5]))


def test_keep_best_needs_the_gain_to_be_significant():
    """rl.select.min_z: a 3% gain past the margin ships only when the paired envs agree on it."""
    import numpy as np

    bc = Policy(PolicyConfig.from_dict({"context_frames": 2, "channels": [4, 8], "frame_height": 32,
                                        "frame_width": 64}))
    g = np.random.default_rng(1)
    base = g.uniform(2.0, 6.0, 32)
    kb = KeepBest(margin=0.02, min_z=2.0)
    assert kb.offer(-1, bc, _envs(base))
    noisy = _envs(base * 0.97 + _noise(g, 1.0))  # 3% lower: past the 2% margin
    assert noisy["predicted_per_100km"] < 0.98 * kb.best_score
    assert not kb.offer(0, bc, noisy) and kb.best_iteration == -1
    assert kb.history[-1]["z_vs_best"] < 2.0 and "env_events" not in kb.history[-1]
    assert kb.offer(1, bc, _envs(base * 0.96 + _noise(g, 0.01)))
    assert kb.best_iteration == 1 and kb.history[-1]["z_vs_best"] > 2.0
    # without the test (min_z 0) the noisy gain would have shipped
    kb0 = KeepBest(margin=0.02)
    kb0.offer(-1, bc, _envs(base))
    assert kb0.offer(0, bc, noisy)


def test_keep_best_confirms_the_winner_on_fresh_draws_or_reverts_to_bc():
    """rl.select.confirm: an iterate that won must beat BC again on other draws; a gain that was
    the winner's curse (level with BC on fresh draws) reverts the best to BC's weights."""
    import numpy as np

    bc = Policy(PolicyConfig.from_dict({"context_frames": 2, "channels": [4, 8], "frame_height": 32,
                                        "frame_width": 64}))
    it = Policy(PolicyConfig.from_dict({"context_frames": 2, "channels": [4, 8], "frame_height": 32,
                                        "frame_width": 64}))
    with torch.no_grad():
        for p in it.parameters():
            p.add_(1.0)
    g = np.random.default_rng(2)
    base = g.uniform(2.0, 6.0, 32)
    kb = KeepBest(margin=0.02, min_z=2.0)
    kb.offer(-1, bc, _envs(base))
    assert kb.offer(4, it, _envs(base * 0.9 + _noise(g, 0.01)))
    fresh = g.uniform(2.0, 6.0, 32)
    # on fresh draws the iterate is level with BC: not confirmed, BC's weights ship
    c = kb.confirm(_envs(fresh), _envs(fresh + _noise(g, 0.3)), bc.state_dict())
    assert c["confirmed"] is False and c["iteration"] == 4 and kb.best_iteration == -1
    assert all(torch.equal(v, bc.state_dict()[k]) for k, v in kb.best_state.items())
    assert kb.best_score == pytest.approx(_envs(fresh)["predicted_per_100km"])
    # a real gain holds on fresh draws: the iterate stays the best
    kb2 = KeepBest(margin=0.02, min_z=2.0)
    kb2.offer(-1, bc, _envs(base))
    kb2.offer(4, it, _envs(base * 0.9 + _noise(g, 0.01)))
    c2 = kb2.confirm(_envs(fresh), _envs(fresh * 0.9 + _noise(g, 0.01)), bc.state_dict())
    assert c2["confirmed"] is True and c2["z"] > 2.0 and kb2.best_iteration == 4
    assert any(not torch.equal(v, bc.state_dict()[k]) for k, v in kb2.best_state.items())
