"""``drivegpt eval policy``: closed-loop evaluation in the ground-truth road world.

    drivegpt eval policy policies.rl=runs/rl policies.bc=runs/bc [world_model_checkpoint=WM \
        data.shards=TOKEN_SHARDS] run_dir=runs/eval

Every controller drives the same fixed, seeded, held-out scenarios (RoadWorld-v0 roads with
seeds ``rl.eval.first_seed + i``; the fleet uses seeds from 0) for ``rl.eval.seconds`` each,
under the fleet's own protocol (``sim.roadworld.fleet.drive_segment``): the ground-truth
safety driver checks every 20 Hz frame while the controller is engaged; on a disengagement
the ``HumanDriver`` takes over for ``autopilot.takeover_seconds`` and the controller
re-engages when it is safe. Metrics count engaged driving only (``rl.metrics``). Policies act
at the data stride (5 Hz by default: one deterministic decision -- bottleneck at its mean,
the Gaussian's mean -- held for ``stride`` frames), seeing their last K frames at that stride.
Baselines: the fleet's ``Autopilot`` (quality drawn from the scenario seed) and the
``HumanDriver``.

Writes ``metrics.json`` (a row per controller, plus the sim-to-real gap when a world model is
given: predicted disengagements/100 km in the learned sim for the same policy), ``table.md``
and ``closed_loop.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from drivegpt.data.schema import Cause
from drivegpt.runs import atomic_path, atomic_write_text, mark_done, write_metrics
from drivegpt.rl.metrics import Trajectory, closed_loop_metrics, markdown_table
from drivegpt.rl.policy import Policy, load_policy

BASELINES = ("autopilot", "human")


def _safe_to_engage(m: dict) -> bool:
    try:  # the fleet's own re-engagement rule
        from drivegpt.sim.roadworld.fleet import _safe_to_engage as rule

        return bool(rule(m))
    except ImportError:  # pragma: no cover
        closing = m["speed"] - m["lead_speed"]
        ttc_ok = closing <= 0 or m["lead_gap"] / closing > 4.0
        return (abs(m["lane_offset"]) < 0.35 and abs(m["heading_error"]) < 0.04 and ttc_ok
                and m["lead_gap"] > max(8.0, 1.0 * m["speed"]))


class _Scenario:
    """One road (seed) driven by one controller with the fleet's takeover protocol."""

    def __init__(self, seed: int, seconds: float, cfg_sim, kind: str):
        from drivegpt.sim.roadworld import Autopilot, HumanDriver, RoadWorldEnv

        self.env = RoadWorldEnv(config=cfg_sim, seconds=seconds)
        self.env.reset(seed=seed, options={"world_seed": seed})
        w = self.env.unwrapped
        self.world, self.safety, self.cfg = w.world, w.safety, w.cfg
        self.human = HumanDriver()
        self.ctrl = Autopilot(seed, self.cfg.autopilot, self.cfg.fps) if kind == "autopilot" else (
            HumanDriver() if kind == "human" else None)
        self.traj = Trajectory(dt=self.cfg.dt)
        self.on, self.left, self.stretch = True, 0, 0
        self.takeover = int(round(self.cfg.autopilot.takeover_seconds * self.cfg.fps))
        self.steps = int(round(seconds * self.cfg.fps))
        self.just_engaged = True
        self.history: np.ndarray | None = None

    def check(self) -> None:
        """The safety driver's turn at the current frame (before this frame's action)."""
        m = self.world.metrics()
        self.just_engaged = False
        if not self.on and self.left <= 0 and _safe_to_engage(m):
            self.on, self.just_engaged = True, True
            self.safety.reset()
            if self.ctrl is not None and hasattr(self.ctrl, "reset"):
                self.ctrl.reset()
        if self.on:
            self.traj.add(m["speed"], m["flow_speed"], m["lat_accel"], m["accel"], m["lane_offset"], self.stretch)
            cause = self.safety.check(m)
            if cause != Cause.NONE:
                self.traj.disengage(int(cause))
                self.on, self.left = False, self.takeover
                self.stretch += 1
                self.human.reset()

    def observe(self, k: int) -> None:
        """Render the current frame into the K-frame history (policies only)."""
        img = self.world.render()
        img = img[0] if isinstance(img, tuple) else img
        if self.history is None:
            self.history = np.repeat(img[None], k, axis=0)
        else:
            self.history = np.concatenate([self.history[1:], img[None]], 0)

    def act(self, policy_action: np.ndarray | None) -> None:
        if self.on:
            a = policy_action if self.ctrl is None else self.ctrl.act(self.world)
        else:
            a = self.human.act(self.world)
            self.left -= 1
        self.world.step(np.asarray(a, dtype=np.float64))


def drive(kind: str, seeds: list[int], seconds: float, cfg_sim, policy: Policy | None = None,
          stride: int = 4, device: str = "cpu", progress: bool = False,
          frames_out: list | None = None) -> list[Trajectory]:
    """Drive every scenario with one controller ("autopilot", "human" or a ``policy``).

    ``frames_out``: a list that receives (camera frame, caption) of the first scenario every
    ``stride`` steps (who drives, speed), for the ground-truth driving video of a policy."""

    from tqdm.auto import tqdm

    scen = [_Scenario(s, seconds, cfg_sim, "policy" if policy is not None else kind) for s in seeds]
    steps = scen[0].steps
    held = np.zeros((len(scen), 2))
    if policy is not None:
        policy = policy.to(device).eval()
        k, h, w = policy.obs_shape[:3]
        got = (scen[0].cfg.height, scen[0].cfg.width)
        if got != (h, w):
            raise ValueError(f"policy observation {h}x{w} but the road world renders {got[0]}x{got[1]} "
                             f"(set data.frame_height/width to the policy's size)")
    for t in tqdm(range(steps), desc=kind, disable=not progress, leave=False):
        for s in scen:
            s.check()
        if policy is not None:
            if t % stride == 0:
                for s in scen:
                    s.observe(k)
                if frames_out is not None:
                    s0 = scen[0]
                    who = f"{kind} engaged" if s0.on else f"human takeover ({s0.left} steps)"
                    frames_out.append((s0.history[-1], f"{who}  {s0.world.state[0] * 3.6:.0f} km/h"))
            need = [i for i, s in enumerate(scen) if s.on and (t % stride == 0 or s.just_engaged)]
            if need:
                frames = torch.as_tensor(np.stack([scen[i].history for i in need])).to(device)
                speed = torch.as_tensor([float(scen[i].world.state[0]) for i in need], dtype=torch.float32,
                                        device=device)
                with torch.no_grad():
                    a = policy.act(frames, speed, deterministic=True).cpu().numpy()
                held[need] = a
        for i, s in enumerate(scen):
            s.act(held[i] if policy is not None else None)
    return [s.traj for s in scen]


def sim_predicted_rate(policy: Policy, cfg: DictConfig, num_envs: int) -> dict:
    """Expected disengagements/100 km of ``policy`` in the learned sim (events not sampled)."""
    from drivegpt.rl.envs import learned_sim_settings, make_learned_env
    from drivegpt.rl.train import final_rollouts

    settings = learned_sim_settings(cfg)
    settings["termination"] = "never"
    env = make_learned_env(num_envs, policy.cfg.context_frames, settings)
    out = final_rollouts(policy, env, int(settings.get("max_steps", 50)), seed=int(cfg.seed))
    return {"predicted_per_100km": out["predicted_per_100km"], "sim_km": out["km"]}


def plot(rows: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    bottom = np.zeros(len(names))
    for cause, color in (("STEER", "tab:blue"), ("BRAKE", "tab:red"), ("GAS", "tab:green")):
        v = np.array([rows[n].get(f"{cause}_per_100km") or 0.0 for n in names])
        ax[0].bar(x, v, bottom=bottom, label=cause, color=color)
        bottom += v
    ax[0].set_title("disengagements / 100 km (by cause)")
    ax[0].legend()
    ax[1].bar(x, [rows[n].get("speed_ratio") or 0.0 for n in names], color="tab:gray")
    ax[1].axhline(1.0, color="k", lw=0.8, ls="--")
    ax[1].set_title("mean speed / flow speed")
    w = 0.25
    for j, (key, lab) in enumerate((("lane_error_mean", "lane err m"), ("lat_accel_p95", "|lat acc| p95"),
                                    ("jerk_p95", "|jerk| p95 / 5"))):
        v = np.array([rows[n].get(key) or 0.0 for n in names]) / (5.0 if key == "jerk_p95" else 1.0)
        ax[2].bar(x + (j - 1) * w, v, w, label=lab)
    ax[2].set_title("comfort and lane keeping")
    ax[2].legend(fontsize=7)
    for a in ax:
        a.set_xticks(x, names)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def controllers_of(cfg: DictConfig) -> dict[str, str | None]:
    """name -> policy checkpoint (None for the road world's own baselines)."""
    out: dict[str, str | None] = {}
    pol = OmegaConf.to_container(cfg.policies, resolve=True) if cfg.get("policies") else {}
    for name, path in (pol or {}).items():
        if path:
            out[str(name)] = str(path)
    if cfg.get("checkpoint"):
        out["policy"] = str(cfg.checkpoint)
    for name in cfg.rl.eval.controllers:
        if name in BASELINES:
            out[str(name)] = None
    if not out:
        raise ValueError("eval policy: nothing to evaluate (give policies.NAME=CKPT, checkpoint=CKPT, "
                         "or baselines in rl.eval.controllers)")
    return out


def run(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    e = cfg.rl.eval
    seeds = [int(e.first_seed) + i for i in range(int(e.scenarios))]
    stride = int(cfg.data.stride)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    rows, timing, gap = {}, {}, {}
    for name, path in controllers_of(cfg).items():
        policy = load_policy(path) if path else None
        # a policy decides at the stride it was trained at (recorded in its checkpoint)
        pstride = int(policy.checkpoint_meta.get("stride", stride)) if policy is not None else stride
        t0 = time.perf_counter()
        frames = [] if policy is not None else None
        trajs = drive(name, seeds, float(e.seconds), cfg.sim, policy, pstride, device, progress, frames)
        timing[name] = time.perf_counter() - t0
        if frames:  # the policy driving the ground truth (first scenario), for people to watch
            from drivegpt.rl.video import caption, upscale, write_video

            big = upscale(np.stack([f for f, _ in frames]), min_height=192)
            write_video(run_dir / "videos" / f"{name}_ground_truth",
                        np.stack([caption(f, text) for f, (_, text) in zip(big, frames)]),
                        fps=float(cfg.data.fps) / pstride)
        rows[name] = closed_loop_metrics(trajs)
        if policy is not None and cfg.get("world_model_checkpoint"):
            g = sim_predicted_rate(policy, cfg, int(e.get("sim_envs", 16)))
            g["measured_per_100km"] = rows[name]["per_100km"]
            m = g["measured_per_100km"]
            g["predicted_over_measured"] = g["predicted_per_100km"] / m if m else float("nan")
            gap[name] = g
    md = markdown_table(rows)
    if gap:
        md += "\n| policy | predicted dis/100km (learned sim) | measured dis/100km (ground truth) |\n|---|---:|---:|\n"
        md += "".join(f"| {n} | {g['predicted_per_100km']:.1f} | {g['measured_per_100km']:.1f} |\n"
                      for n, g in gap.items())
    header = (f"# Closed-loop evaluation\n\n{len(seeds)} held-out RoadWorld scenarios (seeds {seeds[0]}.."
              f"{seeds[-1]}), {float(e.seconds):.0f} s each.\n\n")
    atomic_write_text(run_dir / "table.md", header + md)
    plot(rows, run_dir / "closed_loop.png")
    metrics = {"controllers": rows, "sim_to_real": gap, "seeds": seeds, "seconds": float(e.seconds),
               "seconds_per_controller": timing}
    for name, row in rows.items():  # short per-controller summary at the top level (pipeline headline)
        if name not in metrics:
            metrics[name] = {"disengagements_per_100km": row["per_100km"], "speed_ratio": row["speed_ratio"],
                             "km": row["km"]}
    write_metrics(run_dir, metrics)
    mark_done(run_dir, {"stage": "eval_policy"})
    print(header + md)
    return metrics
