"""PPO over a batched torch environment: GAE, the clipped loss, a Fabric training loop.

Generic over the environment and the policy, so the same code is tested on a 1-D toy and
run in the learned simulator:

- env (batched, on the device): ``reset(seed) -> obs`` and ``step(action [n 2]) ->
  (obs, reward [n], terminated [n], truncated [n], info)`` with gymnasium's SAME_STEP
  autoreset (when an env is done, the returned obs is already its next episode's first obs,
  and ``info["final_obs"]`` holds the observation the episode ended on, rows of the done
  envs valid; mask ``info["_final_obs"]``).
  ``obs`` is a dict of tensors with leading dim n (e.g. {frames [n K H W 3], speed [n], cruise [n]}).
  ``info`` may hold per-env tensors; the loop averages the numeric ones it knows
  (``disengage``/``event`` rates, ``uncertainty``) into its statistics.
- policy: ``policy(**obs, noise=...) -> (mean [n A], log_std [n A], value [n])``; if it has
  ``sample_noise(n)`` (the information bottleneck) the noise sample of each step is stored,
  so the PPO ratio is evaluated on the same noisy features the action was drawn from.

Termination vs truncation: a terminated step (a sampled disengagement) is the end of the
return (no bootstrap). A truncated step (the sim's time limit, which the policy cannot observe)
is not: its target bootstraps from V(final obs), ``r + gamma V(s_final)``, exactly as if the
episode went on; GAE still stops propagating across the boundary, because the next obs in the
buffer belongs to a new episode. An env that truncates without ``final_obs`` in its info gets
the old terminal treatment and a one-time warning.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from drivegpt.rl.policy import gaussian_entropy, gaussian_kl, gaussian_log_prob
from drivegpt.settings import typed


@dataclass
class PPOConfig:
    num_envs: int = 16
    rollout_steps: int = 32
    iterations: int = 50
    epochs: int = 4
    minibatches: int = 4
    lr: float = 1e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    kl_coef: float = 0.1
    max_grad_norm: float = 0.5
    target_kl: float | None = 0.05
    uncertainty_coef: float = 0.0
    normalize_advantages: bool = True
    reward_scale: float = 1.0          # rewards are multiplied by this before GAE
    termination_penalty: float = 0.0   # subtracted (after scaling) on terminated steps: with rewards
                                       # that are minus a hazard, ending the episode must not pay
    detach_critic: bool = True         # value loss does not train the shared features (policy.detach_critic)
    value_warmup_iterations: int = 0   # first N iterations fit the critic only (BC trains no critic)
    train_seconds: float | None = None  # wall-clock budget: no iteration starts that would end past it

    @classmethod
    def from_dict(cls, d: dict | None) -> "PPOConfig":
        """From ``rl.ppo`` (less the stage's runtime keys, ``RUNTIME_KEYS``); unknown keys raise."""
        return typed(cls, d, "rl.ppo")


# rl.ppo keys the training stage reads itself (Fabric and videos), not PPO's algorithm.
RUNTIME_KEYS = ("video_every", "precision", "accelerator", "devices")


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
                gamma: float, lam: float, final_values: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation.

    rewards, values, dones: [T n]; ``dones[t]`` = the episode ended with step t (terminated or
    truncated: nothing propagates from t+1, which is a new episode); last_value [n] = V(obs
    after the last step). ``final_values`` [T n]: the value to bootstrap from where an episode
    was *truncated* at step t (V of its final obs; 0 where it terminated or went on).
    Returns (advantages, returns) [T n].
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    gae = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        next_value = last_value if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t].to(rewards.dtype)
        boot = next_value * nonterminal
        if final_values is not None:
            boot = boot + final_values[t] * (1.0 - nonterminal)
        delta = rewards[t] + gamma * boot - values[t]
        gae = delta + gamma * lam * nonterminal * gae
        adv[t] = gae
    return adv, adv + values


def ppo_loss(policy, batch: dict[str, Any], cfg: PPOConfig, critic_only: bool = False
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate + value loss - entropy bonus + KL(pi || reference) on one minibatch
    (``critic_only``: the value loss alone, for the critic's warm-up)."""
    mean, log_std, value = policy(**batch["obs"], noise=batch.get("noise"))
    logp = gaussian_log_prob(batch["action"], mean, log_std)
    ratio = (logp - batch["logp"]).exp()
    adv = batch["adv"]
    if cfg.normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv).mean()
    v_loss = 0.5 * (value - batch["ret"]).pow(2).mean()
    entropy = gaussian_entropy(log_std).mean()
    loss = pg + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
    kl_ref = torch.zeros((), device=mean.device)
    if "ref_mean" in batch:
        kl_ref = gaussian_kl(mean, log_std, batch["ref_mean"], batch["ref_log_std"]).mean()
        if cfg.kl_coef > 0:
            loss = loss + cfg.kl_coef * kl_ref
    if critic_only:
        loss = cfg.value_coef * v_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - (logp - batch["logp"])).mean()
        clipfrac = ((ratio - 1).abs() > cfg.clip).float().mean()
    stats = dict(loss=loss.detach(), policy_loss=pg.detach(), value_loss=v_loss.detach(),
                 entropy=entropy.detach(), kl_to_ref=kl_ref.detach(), approx_kl=approx_kl, clipfrac=clipfrac)
    return loss, stats


def _noise(policy, n: int, device) -> torch.Tensor | None:
    fn = getattr(policy, "sample_noise", None)
    return fn(n, device=device) if fn is not None else None


_warned_no_final_obs = False


def _final_values(policy, info, truncated: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """V(final obs) [n] of the envs truncated at this step (0 elsewhere), for the bootstrap."""
    global _warned_no_final_obs
    out = torch.zeros_like(like)
    if not bool(truncated.any()):
        return out
    final = info.get("final_obs") if isinstance(info, dict) else None
    if final is None:
        if not _warned_no_final_obs:
            warnings.warn("PPO: the env truncated an episode without info['final_obs']; treating the "
                          "time limit as terminal (no bootstrap)", stacklevel=3)
            _warned_no_final_obs = True
        return out
    idx = truncated.nonzero().flatten()
    sub = {k: v[idx] for k, v in final.items()}
    _, _, v = policy(**sub, noise=_noise(policy, int(idx.numel()), like.device))
    out[idx] = v.to(out.dtype)
    return out


@torch.no_grad()
def collect_rollout(policy, env, obs: dict[str, torch.Tensor], steps: int, ref_policy=None,
                    on_step: Callable | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Run ``steps`` batched steps with the stochastic policy. Returns (buffer [T n ...], last obs)."""
    buf: dict[str, list] = {k: [] for k in ("action", "logp", "value", "reward", "done", "noise",
                                             "ref_mean", "ref_log_std", "uncertainty", "event",
                                             "event_prob", "distance", "final_value")}
    obs_buf: dict[str, list] = {k: [] for k in obs}
    for _ in range(steps):
        n = next(iter(obs.values())).shape[0]
        device = next(iter(obs.values())).device
        noise = _noise(policy, n, device)
        mean, log_std, value = policy(**obs, noise=noise)
        action = mean + log_std.exp() * torch.randn_like(mean)
        logp = gaussian_log_prob(action, mean, log_std)
        if ref_policy is not None:
            rm, rls, _ = ref_policy(**obs, noise=noise)
            buf["ref_mean"].append(rm)
            buf["ref_log_std"].append(rls)
        for k, v in obs.items():
            obs_buf[k].append(v)
        next_obs, reward, terminated, truncated, info = env.step(action.clamp(-1.0, 1.0))
        terminated, truncated = terminated.bool(), truncated.bool() & ~terminated.bool()
        done = terminated | truncated
        buf["final_value"].append(_final_values(policy, info, truncated, value))
        buf["action"].append(action)
        buf["logp"].append(logp)
        buf["value"].append(value)
        buf["reward"].append(reward.to(value.dtype))
        buf["done"].append(done)
        buf["event"].append(terminated.to(value.dtype))
        if noise is not None:
            buf["noise"].append(noise)
        unc = info.get("uncertainty") if isinstance(info, dict) else None
        if unc is not None:
            buf["uncertainty"].append(torch.as_tensor(unc, device=device, dtype=value.dtype).reshape(n))
        ep = info.get("event_prob") if isinstance(info, dict) else None
        dist = info.get("distance") if isinstance(info, dict) else None
        if ep is not None and dist is not None:  # learned sim: event probability (any cause) this step
            buf["event_prob"].append(torch.as_tensor(ep, device=device, dtype=value.dtype).reshape(n))
            buf["distance"].append(torch.as_tensor(dist, device=device, dtype=value.dtype).reshape(n))
        if on_step is not None:
            on_step(obs, action, reward, done, info)
        obs = next_obs
    out = {k: torch.stack(v) for k, v in buf.items() if v}
    out["obs"] = {k: torch.stack(v) for k, v in obs_buf.items()}
    return out, obs


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def rollout_targets(buf: dict[str, Any], last_value: torch.Tensor, cfg: PPOConfig
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, value targets) [T n] of a rollout: GAE with the truncation bootstrap."""
    reward = buf["reward"]
    if cfg.uncertainty_coef and "uncertainty" in buf:
        reward = reward - cfg.uncertainty_coef * buf["uncertainty"]
    reward = reward * cfg.reward_scale
    if cfg.termination_penalty and "event" in buf:
        reward = reward - cfg.termination_penalty * buf["event"]
    return compute_gae(reward, buf["value"], buf["done"], last_value, cfg.gamma, cfg.gae_lambda,
                       buf.get("final_value"))


def ppo_update(policy, optimizer, fabric, buf: dict[str, Any], last_value: torch.Tensor, cfg: PPOConfig,
               generator: torch.Generator | None = None, critic_only: bool = False) -> dict[str, float]:
    """GAE on the rollout, then ``cfg.epochs`` epochs of minibatch PPO. Returns mean statistics."""
    adv, ret = rollout_targets(buf, last_value, cfg)
    flat = {k: _flatten(buf[k]) for k in ("action", "logp", "noise", "ref_mean", "ref_log_std") if k in buf}
    flat["obs"] = {k: _flatten(v) for k, v in buf["obs"].items()}
    flat["adv"], flat["ret"] = _flatten(adv), _flatten(ret)
    N = flat["adv"].shape[0]
    mb = max(1, N // cfg.minibatches)
    totals: dict[str, float] = {}
    count = 0
    stop = False
    for _ in range(cfg.epochs):
        perm = torch.randperm(N, generator=generator).to(flat["adv"].device)
        for start in range(0, N - mb + 1, mb):
            idx = perm[start:start + mb]
            batch = {k: (v[idx] if isinstance(v, torch.Tensor) else {kk: vv[idx] for kk, vv in v.items()})
                     for k, v in flat.items()}
            loss, stats = ppo_loss(policy, batch, cfg, critic_only)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if cfg.max_grad_norm:
                fabric.clip_gradients(policy, optimizer, max_norm=cfg.max_grad_norm)
            optimizer.step()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            count += 1
            if not critic_only and cfg.target_kl is not None:
                kl = stats["approx_kl"]
                if getattr(fabric, "world_size", 1) > 1:  # one decision for every rank: equal update counts
                    kl = fabric.all_reduce(torch.as_tensor(kl, dtype=torch.float32, device=fabric.device),
                                           reduce_op="mean")
                if float(kl) > cfg.target_kl:
                    stop = True
                    break
        if stop:
            break
    out = {k: v / max(count, 1) for k, v in totals.items()}
    out["updates"] = float(count)
    out["explained_variance"] = float(1 - (ret - buf["value"]).var() / (ret.var() + 1e-8))
    return out


def episode_returns(reward: torch.Tensor, done: torch.Tensor, running: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """Accumulate per-env returns across rollouts; returns (finished episode returns, running)."""
    finished = []
    for t in range(reward.shape[0]):
        running = running + reward[t]
        d = done[t]
        if bool(d.any()):
            finished += running[d].tolist()
            running = torch.where(d, torch.zeros_like(running), running)
    return finished, running


def _freeze_norm(policy):
    """BatchNorm keeps BC's statistics in RL: rollouts and updates must see one network."""
    if hasattr(policy, "freeze_norm"):
        policy.freeze_norm()
    return policy


def train_ppo(policy, env, cfg: PPOConfig, fabric=None, ref_policy=None, seed: int = 0,
              log: Callable[[int, dict], None] | None = None, on_step: Callable | None = None,
              on_iteration: Callable[[int, dict, Any], None] | None = None,
              start_iteration: int = 0, optimizer_state: dict | None = None) -> list[dict]:
    """The PPO loop. ``fabric``: a ``lightning.Fabric`` (a CPU one is made if None).

    ``log(iteration, stats)`` gets one dict per iteration: mean return of finished episodes,
    event (termination) rate per step, predicted disengagements per 100 km (learned sim),
    uncertainty, KL to the reference policy, losses. ``on_iteration(it, stats, optimizer)``
    runs after each update (checkpointing); ``start_iteration``/``optimizer_state`` resume.
    """
    import lightning as L

    if fabric is None:
        fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true")
        fabric.launch()
    torch.manual_seed(seed)
    # on the device before the optimizer exists: a resumed state's moments then load onto the
    # parameters' device (fabric.setup moves the parameters, not an optimizer's state)
    policy = policy.to(fabric.device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    _freeze_norm(policy)
    if hasattr(policy, "detach_critic"):
        policy.detach_critic = bool(cfg.detach_critic)
    policy, optimizer = fabric.setup(policy, optimizer)
    if ref_policy is not None:
        ref_policy = _freeze_norm(ref_policy.to(fabric.device).eval())
        for p in ref_policy.parameters():
            p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    obs = env.reset(seed=seed + start_iteration)
    running = None
    history = []
    t_loop = time.perf_counter()
    for it in range(start_iteration, cfg.iterations):
        t0 = time.perf_counter()
        policy.train()
        if ref_policy is not None:
            ref_policy.train()  # same bottleneck noise sample as the policy (passed explicitly)
        buf, obs = collect_rollout(policy, env, obs, cfg.rollout_steps, ref_policy, on_step)
        with torch.no_grad():
            _, _, last_value = policy(**obs, noise=_noise(policy, buf["reward"].shape[1], buf["reward"].device))
        if running is None:
            running = torch.zeros_like(buf["reward"][0])
        finished, running = episode_returns(buf["reward"], buf["done"], running)
        stats = ppo_update(policy, optimizer, fabric, buf, last_value, cfg, gen,
                           critic_only=it < cfg.value_warmup_iterations)
        stats.update(
            iteration=it,
            mean_reward=float(buf["reward"].mean()),
            episode_return=float(sum(finished) / len(finished)) if finished else float("nan"),
            episodes=len(finished),
            event_rate=float(buf["event"].mean()),
            uncertainty=float(buf["uncertainty"].mean()) if "uncertainty" in buf else float("nan"),
            seconds=time.perf_counter() - t0,
        )
        if "event_prob" in buf:
            km = float(buf["distance"].sum()) / 1000.0
            stats["predicted_event_prob"] = float(buf["event_prob"].mean())
            stats["predicted_per_100km"] = float(buf["event_prob"].sum()) / km * 100.0 if km > 0 else float("nan")
        # the budget: stop where one more iteration (at this run's mean pace, callbacks included)
        # would end past it; stats["last"] tells the callbacks (keep-the-best scores the last one)
        done = it + 1 - start_iteration
        spent = time.perf_counter() - t_loop
        out_of_time = cfg.train_seconds is not None and spent + spent / done > float(cfg.train_seconds)
        stats["last"] = it + 1 == cfg.iterations or out_of_time
        history.append(stats)
        if log is not None:
            log(it, stats)
        if on_iteration is not None:
            on_iteration(it, stats, optimizer)
        if out_of_time and it + 1 < cfg.iterations:
            break
    return history
