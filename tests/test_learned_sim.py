"""The learned simulator's env machinery, on contract fakes (sim.learned.testing)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import drivegpt.sim  # noqa: F401  (registers the envs)
from drivegpt.sim.learned import (LearnedSimConfig, ModelMismatchError, Models, WorldModelEnv,
                         WorldModelVectorEnv, pool_from_samples, pool_from_shards)
from drivegpt.sim.learned.testing import FakeTokenizer, fake_samples, fake_setup, fake_step


@pytest.fixture(scope="module")
def fakes():
    return fake_setup(context_frames=3, stride=2)


def kw(fakes, **settings):
    m, p, v = fakes
    return dict(models=m, contexts=p, vehicle=v, stride=2, **settings)


def test_gym_make_and_check_env(fakes):
    env = gym.make("drivegpt/WorldModel-v0", max_steps=8, **kw(fakes))
    check_env(env.unwrapped, skip_render_check=False)
    obs, _ = env.reset(seed=1)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (32, 64, 3)
    tok = gym.make("drivegpt/WorldModel-v0", observation="tokens", **kw(fakes))
    check_env(tok.unwrapped)
    obs, _ = tok.reset(seed=1)
    assert obs["tokens"].shape == (2, 4) and obs["tokens"].max() < 16


def test_vector_env_registered_and_autoreset_next_step(fakes):
    envs = gym.make_vec("drivegpt/WorldModel-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        max_steps=3, termination="never", **kw(fakes))
    assert isinstance(envs.unwrapped, WorldModelVectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    envs.reset(seed=0)
    a = np.zeros((3, 2), np.float32)
    for t in range(3):
        obs, rew, term, trunc, _ = envs.step(a)
        assert trunc.all() == (t == 2) and not term.any()
    first_ctx = envs.unwrapped.core.ctx_index.clone()
    obs, rew, term, trunc, info = envs.step(np.full((3, 2), np.nan, np.float32))  # ignored: resetting
    assert (rew == 0).all() and not term.any() and not trunc.any()
    core = envs.unwrapped.core
    assert (core.t == 0).all() and (core.episode == 1).all()
    fresh = core.decode(core.current()[0]).numpy()
    np.testing.assert_array_equal(obs["image"], fresh)
    assert first_ctx.shape == core.ctx_index.shape


def test_same_step_autoreset_reports_final_obs(fakes):
    envs = WorldModelVectorEnv(2, max_steps=2, termination="never", autoreset_mode="same_step", **kw(fakes))
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    envs.reset(seed=5)
    envs.step(np.zeros((2, 2)))
    obs, rew, term, trunc, info = envs.step(np.zeros((2, 2)))
    assert trunc.all() and info["_final_obs"].all()
    assert (envs.core.t == 0).all()
    assert not np.array_equal(info["final_obs"]["image"], obs["image"])


def rollout(env, actions):
    out = []
    for a in actions:
        obs, r, te, tr, info = env.step(a)
        out.append((obs["image"].copy(), r, te, tr, info["disengage_probs"]))
    return out


def test_batch_step_equals_single_env_steps(fakes):
    n, T = 4, 6
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (T, n, 2)).astype(np.float32)
    s = dict(temperature=0.0, max_steps=50, termination="sample", **kw(fakes))
    venv = WorldModelVectorEnv(n, **s)
    venv.reset(seed=10)
    batch = rollout(venv, actions)
    for i in range(n):
        env = WorldModelEnv(**s)
        env.reset(seed=10 + i)
        single = rollout(env, actions[:, i])
        for (bo, br, bte, btr, bp), (so, sr, ste, s_tr, sp) in zip(batch, single):
            np.testing.assert_array_equal(bo[i], so)
            np.testing.assert_allclose(br[i], sr, rtol=1e-5, atol=1e-6)
            assert bte[i] == ste and btr[i] == s_tr
            np.testing.assert_allclose(bp[i], sp, rtol=1e-5, atol=1e-6)


def test_determinism_under_seed_with_sampling(fakes):
    s = dict(temperature=1.0, max_steps=50, **kw(fakes))
    actions = np.random.default_rng(1).uniform(-1, 1, (5, 3, 2)).astype(np.float32)
    runs = []
    for seed in (7, 7, 8):
        venv = WorldModelVectorEnv(3, **s)
        venv.reset(seed=seed)
        runs.append(rollout(venv, actions))
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert any(not np.array_equal(a[0], c[0]) for a, c in zip(runs[0], runs[2]))


def test_reward_equals_weighted_head_output(fakes):
    m, p, v = fakes
    seen = {}

    def recording_step(model, tokens, rel_pose, speed, return_entropy=False, **k):
        out = fake_step(model, tokens, rel_pose, speed, return_entropy=return_entropy, **k)
        seen["probs"] = out[1].clone()
        return out

    models = Models(m.world_model, m.tokenizer, recording_step, source="<rec>")
    hw, cw = [0.5, 0.3, 0.2], [2.0, 1.0, 0.25]
    venv = WorldModelVectorEnv(3, models=models, contexts=p, vehicle=v, stride=2, termination="never",
                               horizon_weights=hw, cause_weights=cw)
    venv.reset(seed=0)
    w = torch.tensor(hw)[:, None] * torch.tensor(cw)[None, :]
    for a in np.random.default_rng(2).uniform(-1, 1, (4, 3, 2)):
        _, rew, _, _, info = venv.step(a.astype(np.float32))
        expected = -(seen["probs"] * w).sum((1, 2)).numpy()
        np.testing.assert_allclose(rew, expected, rtol=1e-6)
    # comfort and uncertainty terms add on top, with their own weights
    venv = WorldModelVectorEnv(3, models=models, contexts=p, vehicle=v, stride=2, termination="never",
                               horizon_weights=hw, cause_weights=cw, comfort_weight=0.1,
                               uncertainty_weight=0.05)
    venv.reset(seed=0)
    _, rew, _, _, info = venv.step(np.full((3, 2), 0.8, np.float32))
    expected = (-(seen["probs"] * w).sum((1, 2)).numpy() - 0.1 * info["comfort"]
                - 0.05 * info["uncertainty"])
    np.testing.assert_allclose(rew, expected, rtol=1e-5)
    assert (info["uncertainty"] > 0).all() and (info["comfort"] > 0).all()


def test_reset_contexts_come_from_held_out_split_only(tmp_path):
    from drivegpt.data.loaders import split_of
    from drivegpt.data.shards import write_shards

    samples = fake_samples(n_segments=24, T=20)
    val = {s["meta"]["segment_id"] for s in samples if split_of(s["meta"]["segment_id"], 0.3) == "val"}
    assert 0 < len(val) < 24
    write_shards(tmp_path / "tokens", len(samples), samples.__getitem__, maxcount=8, progress=False)
    pool = pool_from_shards(str(tmp_path / "tokens"), 3, 2, val_fraction=0.3, grid=(2, 4), vocab_size=16)
    assert set(pool.segment_ids) == val  # every held-out segment, nothing else
    m, _, v = fake_setup()
    env = WorldModelEnv(models=m, contexts=pool, vehicle=v, stride=2)
    by_id = {s["meta"]["segment_id"]: s for s in samples}
    for seed in range(20):
        _, info = env.reset(seed=seed)
        assert info["segment_id"] in val
        i = info["context_index"]
        logged = by_id[info["segment_id"]]["tokens"][pool.starts[i]::2][:3]
        np.testing.assert_array_equal(env.core.tokens[0].numpy(), logged)
    # reproducible from the seed
    assert env.reset(seed=3)[1] == env.reset(seed=3)[1]
    with pytest.raises(ValueError, match="no held-out"):
        pool_from_shards(str(tmp_path / "tokens"), 3, 2, val_fraction=0.0)
    with pytest.raises(ValueError, match="grid"):
        pool_from_shards(str(tmp_path / "tokens"), 3, 2, val_fraction=0.3, grid=(4, 8))


def test_bad_actions_nan_raises_and_out_of_box_clips(fakes):
    s = dict(temperature=0.0, termination="never", **kw(fakes))
    env = WorldModelEnv(**s)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0.0], np.float32))
    a, b = WorldModelEnv(**s), WorldModelEnv(**s)
    a.reset(seed=0), b.reset(seed=0)
    oa, ra, *_, ia = a.step(np.array([5.0, -3.0], np.float32))
    ob, rb, *_, ib = b.step(np.array([1.0, -1.0], np.float32))
    assert ia["action_clipped"] and not ib["action_clipped"]
    np.testing.assert_array_equal(oa["image"], ob["image"])
    assert ra == rb


def test_mismatched_tokenizer_unknown_checkpoint_and_bad_keys(fakes, tmp_path):
    m, p, v = fakes
    bad = Models(m.world_model, FakeTokenizer(vocab_size=32, grid=m.grid), fake_step, source="wm.ckpt")
    with pytest.raises(ModelMismatchError, match="codebook size 32"):
        WorldModelEnv(models=bad, contexts=p, vehicle=v)
    bad = Models(m.world_model, FakeTokenizer(vocab_size=16, grid=(4, 8)), fake_step, source="wm.ckpt")
    with pytest.raises(ModelMismatchError, match="grid"):
        WorldModelEnv(models=bad, contexts=p, vehicle=v)
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        gym.make("drivegpt/WorldModel-v0", checkpoint=str(missing))
    with pytest.raises(ValueError, match="unknown setting"):
        WorldModelEnv(models=m, contexts=p, vehicle=v, max_stepz=3)
    with pytest.raises(ValueError, match="termination"):
        LearnedSimConfig(termination="sometimes")
    with pytest.raises(ValueError, match="horizon_weights"):
        WorldModelEnv(models=m, contexts=p, vehicle=v, horizon_weights=[1.0])


def test_sampled_termination_follows_the_hazard(fakes):
    """Sampled ends: frequent under a high hazard, a cause code set; never under termination=never."""
    s = dict(temperature=0.0, max_steps=200, **kw(fakes))
    hard = np.tile(np.array([[1.0, -1.0]], np.float32), (16, 1))  # full left + full brake
    venv = WorldModelVectorEnv(16, termination="sample", **s)
    venv.reset(seed=0)
    ends, causes = 0, []
    for _ in range(6):
        _, _, term, _, info = venv.step(hard)
        ends += int(term.sum())
        causes += info["cause"][term].tolist()
    assert ends > 0 and set(causes) <= {1, 2, 3} and 0 not in causes
    venv = WorldModelVectorEnv(16, termination="never", **s)
    venv.reset(seed=0)
    assert not any(venv.step(hard)[2].any() for _ in range(6))


def test_domain_randomization_per_env_and_reproducible(fakes):
    s = dict(domain_randomization={"gain_accel": 0.3, "gain_curvature": 0.5}, **kw(fakes))
    a = WorldModelVectorEnv(4, **s)
    a.reset(seed=0)
    b = WorldModelVectorEnv(4, **s)
    b.reset(seed=0)
    ga, gb = a.core.gain, b.core.gain
    assert torch.equal(ga, gb) and ga[:, 1].unique().numel() == 4
    assert ((ga[:, 1] > 0.7) & (ga[:, 1] < 1.3)).all() and ((ga[:, 0] > 0.5) & (ga[:, 0] < 1.5)).all()
    # the same half-throttle command: cars with gain > 1 accelerate harder than without DR
    plain = WorldModelVectorEnv(4, **kw(fakes))
    plain.reset(seed=0)
    assert torch.equal(plain.core.ctx_index, a.core.ctx_index)
    act = np.tile(np.array([[0.0, 0.5]], np.float32), (4, 1))
    a.step(act), plain.step(act)
    diff = a.core.veh[:, 2] - plain.core.veh[:, 2]
    assert torch.equal(diff > 0, ga[:, 1] > 1) and (diff.abs() > 1e-4).all()
    with pytest.raises(ValueError, match="not a VehicleParams field"):
        WorldModelVectorEnv(2, domain_randomization={"mass": 0.1}, **kw(fakes))
    # the current sim.vehicle takes float-only limits: a clear error at construction, not mid-episode
    with pytest.raises(ValueError, match="domain_randomization"):
        WorldModelVectorEnv(2, domain_randomization={"tau_accel": 0.2}, **kw(fakes))


def test_ensemble_disagreement_and_torch_output(fakes):
    from drivegpt.sim.learned.testing import FakeWorldModel

    m, p, v = fakes
    same = Models(m.world_model, m.tokenizer, fake_step, ensemble=[m.world_model], source="<ens>")
    other = Models(m.world_model, m.tokenizer, fake_step, ensemble=[FakeWorldModel(seed=1)], source="<ens>")
    outs = {}
    for name, models in (("same", same), ("other", other)):
        venv = WorldModelVectorEnv(4, models=models, contexts=p, vehicle=v, stride=2, temperature=0.0,
                                   output="torch", termination="never")
        venv.reset(seed=0)
        obs, rew, term, trunc, info = venv.step(torch.zeros(4, 2))
        assert isinstance(obs["image"], torch.Tensor) and obs["image"].dtype == torch.uint8
        assert isinstance(rew, torch.Tensor) and rew.shape == (4,)
        outs[name] = info
    assert (outs["same"]["token_disagreement"] == 0).all()
    assert (outs["other"]["token_disagreement"] > 0).all()
    # (the fakes share one hazard rule, so only identical members are checked for zero hazard gap)
    assert (outs["same"]["hazard_disagreement"] == 0).all()


def test_rollout_policy_driver_reads_dreamed_frames(fakes):
    from drivegpt.sim.learned.core import SimCore
    from drivegpt.sim.learned.rollout import rollout_batch

    m, p_, v = fakes
    pool = pool_from_samples(fake_samples(n_segments=4, T=40), 3, 2, lambda sid: "val", future=4)
    seen = []

    class Policy:  # rl.policy.Policy's act(frames [b K H W 3] uint8, speed [b]) contract
        obs_shape = (2, 32, 64, 3)

        def act(self, frames, speed, deterministic=False):
            seen.append(frames.clone())
            return torch.tensor([[0.0, -1.0]]).expand(frames.shape[0], 2)

    cfg = LearnedSimConfig(stride=2, temperature=0.0, termination="never", max_steps=10)
    core = SimCore(cfg, m, pool, 2, v)
    out = rollout_batch(core, pool, torch.tensor([0, 1]), 3, "policy", policy=Policy())
    assert len(seen) == 3 and seen[0].shape == (2, 2, 32, 64, 3)
    # the policy saw the dreamed frames: step t's newest frame is the frame dreamed at t-1
    np.testing.assert_array_equal(seen[2][:, -1].numpy(), out["dreamed"][:, 2])
    assert out["dreamed"].shape == (2, 4, 32, 64, 3) and out["real"].shape == (2, 4, 32, 64, 3)
    # full braking all the way: the speed drops every step
    assert (np.diff(core.speed.numpy(), axis=1) < 0).all()


def test_threshold_termination_matches_event_probability(fakes):
    acts = np.zeros((8, 2), np.float32)
    acts[4:, 1] = -1.0  # half of them brake hard: higher BRAKE hazard in the fake head
    probe = WorldModelVectorEnv(8, termination="never", temperature=0.0, **kw(fakes))
    probe.reset(seed=0)
    q = probe.step(acts)[4]["event_probs"]
    q_any = 1 - np.prod(1 - q, axis=1)
    thr = float(np.sort(q_any)[3:5].mean())  # between the 4th and 5th
    venv = WorldModelVectorEnv(8, termination="threshold", threshold=thr, temperature=0.0, **kw(fakes))
    venv.reset(seed=0)
    _, _, term, trunc, info = venv.step(acts)
    np.testing.assert_array_equal(term, q_any > thr)
    assert term.sum() == 4 and not trunc.any()
    np.testing.assert_array_equal(info["cause"][term], q[term].argmax(1) + 1)
    assert (info["cause"][~term] == 0).all()


def test_observations_carry_the_start_segments_cruise_set_speed(fakes):
    """The episode's set speed is its start context's segment meta.cruise_speed (0: not logged),
    the same after a same-step autoreset, and the policy adapter passes it on."""
    from drivegpt.rl.envs import FrameHistoryVecEnv

    _, pool, _ = fakes
    want = {f"seg{i:04d}": (20.0 + i if i % 2 == 0 else 0.0) for i in range(6)}
    envs = WorldModelVectorEnv(4, max_steps=1, termination="never", autoreset_mode="same_step", output="torch",
                               **kw(fakes))
    obs, info = envs.reset(seed=3)
    ids = [pool.segment_ids[int(i)] for i in info["context_index"]]
    assert obs["cruise"].shape == (4, 1)
    assert obs["cruise"][:, 0].tolist() == [want[s] for s in ids]
    assert len({want[s] > 0 for s in ids}) == 2, "the seed should draw logged and unlogged set speeds"
    assert envs.single_observation_space["cruise"].contains(np.asarray(obs["cruise"][0]))
    obs, _, _, trunc, info = envs.step(torch.zeros(4, 2))
    assert trunc.all()
    ids = [pool.segment_ids[int(i)] for i in envs.core.ctx_index]
    assert obs["cruise"][:, 0].tolist() == [want[s] for s in ids]
    hist = FrameHistoryVecEnv(envs, context_frames=2)
    o = hist.reset(seed=3)
    assert o["cruise"].shape == (4,) and torch.equal(o["cruise"], torch.as_tensor(envs.core.cruise))


def test_retokenize_keeps_the_round_trip_in_the_window_and_returns_the_generated_frame(fakes):
    """``retokenize``: the step returns the frame the world model generated; the window the next
    step reads holds its tokenizer round trip (the fake's: odd codes fall on even ones), so the
    runs part from the second step on."""
    from drivegpt.sim.learned.core import SimCore

    m, pool, v = fakes
    runs = {}
    for snap in (False, True):
        core = SimCore(LearnedSimConfig(stride=2, temperature=0.0, termination="never", retokenize=snap), m, pool, 4, v)
        core.reset(seeds=torch.arange(4))
        steps = []
        for _ in range(3):
            res = core.step(torch.zeros(4, 2))
            steps.append(res.tokens.clone())
            expected = m.tokenizer.retokenize(res.tokens) if snap else res.tokens
            assert torch.equal(core.tokens[:, -1], expected)
            assert torch.equal(core.current()[0], res.tokens)  # what observations and renders show
        runs[snap] = steps
    assert torch.equal(runs[False][0], runs[True][0])  # the first frame reads the logged context alike
    assert (runs[True][0] % 2).any()  # the generated frame, not its round trip, is returned
    assert any(not torch.equal(a, b) for a, b in zip(runs[False][1:], runs[True][1:]))
    # the default gym vector env (next-step autoreset) observes the generated frame too
    s = dict(temperature=0.0, termination="never", max_steps=50, retokenize=True, **kw(fakes))
    venv = WorldModelVectorEnv(2, **s)
    venv.reset(seed=3)
    obs, *_ = venv.step(np.zeros((2, 2), np.float32))
    np.testing.assert_array_equal(obs["image"], m.tokenizer.decode(venv.unwrapped.core.newest).numpy())
    assert (venv.unwrapped.core.newest % 2).any()
