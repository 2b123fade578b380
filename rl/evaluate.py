"""Closed-loop evaluation in the ground-truth road world (``drivegpt eval policy``, stage
``drivegpt.stages.eval_policy``).

Every controller drives the same fixed, seeded, held-out scenarios (RoadWorld-v0 roads with
seeds ``rl.eval.first_seed + i``; the fleet uses seeds from 0) for ``rl.eval.seconds`` each,
under the fleet's own protocol (``drivegpt.sim.roadworld.takeover.Takeover``, which
``drive_segment`` runs too): the ground-truth safety driver checks every 20 Hz frame while the
controller is engaged; on a disengagement the ``HumanDriver`` takes over for
``autopilot.takeover_seconds`` and the controller re-engages when it is safe. Metrics count engaged driving only (``rl.metrics``). Policies act
at the data stride (5 Hz by default: one deterministic decision -- bottleneck at its mean,
the Gaussian's mean -- held for ``stride`` frames, through the policy's ``controls``), seeing
their last K frames at that stride, their speed and the cruise set speed (the road's speed limit).
Baselines: the fleet's ``Autopilot`` (quality drawn from the scenario seed) and the
``HumanDriver``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from drivegpt.data.schema import Cause
from drivegpt.rl.metrics import Trajectory
from drivegpt.rl.policy import Policy
from drivegpt.runs import atomic_path
from drivegpt.sim.roadworld import Autopilot, HumanDriver, RoadWorldEnv
from drivegpt.sim.roadworld.takeover import Takeover

BASELINES = ("autopilot", "human")


class _Scenario:
    """One road (seed) driven by one controller with the fleet's takeover protocol."""

    def __init__(self, seed: int, seconds: float, cfg_sim, kind: str):
        self.env = RoadWorldEnv(config=cfg_sim, seconds=seconds)
        self.env.reset(seed=seed, options={"world_seed": seed})
        w = self.env.unwrapped
        self.world, self.cfg = w.world, w.cfg
        self.takeover = Takeover(self.cfg, safety=w.safety)
        self.ctrl = Autopilot(seed, self.cfg.autopilot, self.cfg.fps) if kind == "autopilot" else (
            HumanDriver() if kind == "human" else None)
        self.traj = Trajectory(dt=self.cfg.dt)
        self.stretch = 0
        self.steps = int(round(seconds * self.cfg.fps))
        self.just_engaged = True
        self.history: np.ndarray | None = None
        # the cruise set speed a policy is given: the road's speed limit (the fleet's autopilots
        # set theirs a little below it, ``meta.cruise_speed``)
        self.cruise = float(self.world.road.speed_limit)

    @property
    def on(self) -> bool:
        return self.takeover.engaged

    @property
    def left(self) -> int:
        return self.takeover.left

    def check(self) -> None:
        """The safety driver's turn at the current frame (before this frame's action)."""
        m = self.world.metrics()
        self.just_engaged = self.takeover.reengage(m)
        if self.just_engaged and self.ctrl is not None and hasattr(self.ctrl, "reset"):
            self.ctrl.reset()
        if self.on:
            self.traj.add(m["speed"], m["flow_speed"], m["lat_accel"], m["accel"], m["lane_offset"], self.stretch)
            cause = self.takeover.check(m)
            if cause != Cause.NONE:
                self.traj.disengage(int(cause), self.takeover.reason)
                self.stretch += 1

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
            a = self.takeover.human_act(self.world)
        self.world.step(np.asarray(a, dtype=np.float64))


def _drive_chunk(args) -> tuple[list[Trajectory], list | None]:
    """One worker's share of ``drive(..., workers=N)``: its scenarios, one torch thread."""
    kind, seeds, seconds, cfg_sim, policy, stride, want_frames = args
    torch.set_num_threads(1)
    frames = [] if want_frames else None
    return drive(kind, seeds, seconds, cfg_sim, policy, stride, "cpu", False, frames), frames


def drive(kind: str, seeds: list[int], seconds: float, cfg_sim, policy: Policy | None = None,
          stride: int = 4, device: str = "cpu", progress: bool = False,
          frames_out: list | None = None, workers: int = 1) -> list[Trajectory]:
    """Drive every scenario with one controller ("autopilot", "human" or a ``policy``).

    ``frames_out``: a list that receives (camera frame, caption) of the first scenario every
    ``stride`` steps (who drives, speed), for the ground-truth driving video of a policy.
    ``workers`` > 1 drives contiguous chunks of the scenarios in that many spawned processes (CPU,
    one torch thread each; ``rl.eval.workers``): each scenario is the same function of its seed
    and its controller, so the trajectories come back as one process drives them, in seed order,
    up to the policy's floating point on another batch size."""
    if workers < 1:
        raise ValueError(f"rl.eval.workers={workers}: must be >= 1")
    workers = min(int(workers), len(seeds))
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        bounds = np.linspace(0, len(seeds), workers + 1).round().astype(int)
        cpu_policy = copy.deepcopy(policy).cpu().eval() if policy is not None else None
        jobs = [(kind, list(seeds[a:b]), seconds, cfg_sim, cpu_policy, stride, i == 0 and frames_out is not None)
                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            parts = list(tqdm(pool.map(_drive_chunk, jobs), total=workers, desc=f"{kind} x{workers}",
                              disable=not progress, leave=False))
        if frames_out is not None:
            frames_out.extend(parts[0][1])
        return [t for trajs, _ in parts for t in trajs]

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
                cruise = torch.as_tensor([scen[i].cruise for i in need], dtype=torch.float32, device=device)
                accel = torch.as_tensor([float(scen[i].world.state[2]) for i in need], dtype=torch.float32,
                                        device=device)
                with torch.no_grad():
                    a = policy.act(frames, speed, deterministic=True, cruise=cruise)
                    a = policy.controls(a, accel).cpu().numpy()  # the jerk envelope, when the policy has one
                held[need] = a
        for i, s in enumerate(scen):
            s.act(held[i] if policy is not None else None)
    return [s.traj for s in scen]


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
