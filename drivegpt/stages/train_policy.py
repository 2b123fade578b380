"""``drivegpt train policy``: behaviour cloning (stage=bc) or PPO in the learned sim (stage=rl).

    drivegpt train policy stage=bc data.shards=FLEET_SHARDS run_dir=runs/bc
    drivegpt train policy stage=rl checkpoint=runs/bc world_model_checkpoint=WM.pt \
        data.shards=TOKEN_SHARDS run_dir=runs/rl

``stage=bc|rl`` selects the step (``policy_stage=`` works too; the stage config's own
``stage`` key is ``train_policy``). Both write ``run_dir/policy.pt`` (drivegpt.rl.policy
checkpoint) and ``metrics.json``. BC: Lightning Trainer (make_trainer), resumes with
``trainer.ckpt_path=last``. RL: Lightning Fabric; ``rl_log.csv`` + ``rl_history.json`` per
iteration, wandb (direct) unless ``logger=none``, rollout videos under ``videos/``; resumes
from ``checkpoints/rl_state.pt`` with ``trainer.ckpt_path=last``.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from drivegpt import tracking
from drivegpt.checkpoints import state_sha256, to_cpu
from drivegpt.data.datamodule import FleetDataModule
from drivegpt.rl.bc import BCModule, segment_behaviours, segment_qualities, shards_camera
from drivegpt.rl.checkpoint import load_policy, save_policy
from drivegpt.rl.envs import learned_sim_settings, make_learned_env
from drivegpt.rl.policy import count_flops, policy_config_from_cfg
from drivegpt.rl.ppo import RUNTIME_KEYS, PPOConfig, train_ppo
from drivegpt.rl.selection import KeepBest, context_pools, scoring_env, sim_score
from drivegpt.rl.train import final_rollouts, frame_for_video
from drivegpt.rl.video import write_video
from drivegpt.runs import atomic_path, atomic_write_json, mark_done, read_json, write_metrics
from drivegpt.sim.learned.throughput import measure as measure_throughput
from drivegpt.stages.common import bind_fps
from drivegpt.training import collective_errors, collective_timeout, make_trainer, resume_path

STAGES = ("bc", "rl")


def policy_stage(cfg: DictConfig) -> str:
    s = str(cfg.get("stage"))
    if s in STAGES:
        return s
    s = str(cfg.get("policy_stage", "bc"))
    if s not in STAGES:
        raise ValueError(f"train policy: stage must be one of {STAGES}, got {s!r}")
    return s


def run(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    bind_fps(cfg)
    return run_bc(cfg, run_dir) if policy_stage(cfg) == "bc" else run_rl(cfg, run_dir)


# ----------------------------------------------------------------------------- BC
def run_bc(cfg: DictConfig, run_dir: Path) -> dict:
    pcfg = policy_config_from_cfg(cfg)
    if int(cfg.data.context_frames) < pcfg.context_frames + 1:
        raise ValueError(f"data.context_frames={cfg.data.context_frames}: BC windows need the policy's "
                         f"K={pcfg.context_frames} frames plus the next one (set >= {pcfg.context_frames + 1})")
    if not cfg.data.get("shards") or cfg.data.shards == "???":
        raise ValueError("train policy stage=bc: set data.shards=FLEET_SHARDS (frame shards)")
    b = cfg.rl.bc
    steps = int(b.get("max_steps") or cfg.trainer.max_steps)  # this stage's own length
    dt = float(cfg.data.stride) / float(cfg.data.fps)
    min_q = b.get("min_quality")
    qualities = segment_qualities(cfg.data.shards) if min_q is not None else {}
    vp = OmegaConf.to_container(b.viewpoint, resolve=True) if b.get("viewpoint") else None
    vp = vp if vp and float(vp.get("prob", 0.0)) > 0 else None
    module = BCModule(pcfg.to_dict(), dt=dt, lr=float(b.lr), weight_decay=float(b.weight_decay),
                      exclude_before_disengage_s=float(b.exclude_before_disengage_s),
                      horizons_s=[float(h) for h in cfg.data.horizons], log_std_target=float(b.log_std_target),
                      pad_prob=float(b.get("pad_prob", 0.1)), max_steps=steps,
                      min_quality=None if min_q is None else float(min_q), qualities=qualities,
                      human_weight=float(b.get("human_weight", 1.0)), photometric=float(b.get("photometric", 0.0)),
                      warmup_steps=int(b.get("warmup_steps") or 0),
                      episodes=segment_behaviours(cfg.data.shards) if b.get("exclude_behaviours") else None,
                      stride=int(cfg.data.stride), viewpoint=vp,
                      camera=shards_camera(cfg.data.shards) if vp else None,
                      loss_units=str(b.get("loss_units", "accel")),
                      speed_recovery=OmegaConf.to_container(b.speed_recovery, resolve=True)
                      if b.get("speed_recovery") else None,
                      accel_horizon_s=None if b.get("accel_horizon_s") is None else float(b.accel_horizon_s),
                      lag_compensation=bool(b.get("lag_compensation", False)),
                      accel_expectile=float(b.get("accel_expectile", 0.5)))
    dm = FleetDataModule(cfg, kind="windows", key="frames")
    trainer = make_trainer(cfg, run_dir, "bc", num_sanity_val_steps=0, max_steps=steps)
    t0 = time.perf_counter()
    with collective_errors("train_policy (bc)", trainer, collective_timeout(cfg.trainer).total_seconds()):
        trainer.fit(module, datamodule=dm, ckpt_path=resume_path(cfg, run_dir))
        train_s = time.perf_counter() - t0
        val = trainer.validate(module, datamodule=dm, verbose=False)
    val = val[0] if val else {}
    module.policy.eval()
    flops = count_flops(module.policy)
    metrics = {
        "bc/action_mae": val.get("val/action_mae", float("nan")),
        "bc/curvature_mae": val.get("val/curvature_mae", float("nan")),
        "bc/accel_mae": val.get("val/accel_mae", float("nan")),
        "bc/zero_action_mae": val.get("val/zero_action_mae", float("nan")),
        "bc/train_seconds": train_s,
        "bc/steps": int(trainer.global_step),
        "policy/params": flops["params"],
        "policy/flops_per_frame": flops["flops_per_frame"],
        "policy/flops_per_call": flops["flops_per_call"],
        "policy/bottleneck_bits": module.policy.bottleneck_bits,
    }
    metrics["action_mae"] = metrics["bc/action_mae"]  # the pipeline's headline name
    if trainer.is_global_zero:  # several ranks end with the same weights; one writes them
        save_policy(module.policy, run_dir / "policy.pt", meta={"stage": "bc", "metrics": metrics,
                                                              "shards": str(cfg.data.shards),
                                                              "stride": int(cfg.data.stride),
                                                              "fps": float(cfg.data.fps)})
        write_metrics(run_dir, metrics)
        mark_done(run_dir, {"stage": "bc", "policy": str(run_dir / "policy.pt")})
    return metrics


# ----------------------------------------------------------------------------- RL
class RLLogger:
    """Per-iteration statistics: CSV + JSON copy in run_dir, wandb directly when enabled."""

    def __init__(self, cfg: DictConfig, run_dir: Path, resume: bool):
        self.run_dir = run_dir
        self.csv = run_dir / "rl_log.csv"
        self.json = run_dir / "rl_history.json"
        self.history: list[dict] = []
        if resume and self.json.exists():
            self.history = list(read_json(self.json))
        # A run of its own (finishing the previous stage's, which in `drivegpt pipeline` is still
        # open in this process; wandb.init would otherwise return it and drop our earlier steps).
        self.wandb = tracking.start(cfg, run_dir, "rl")

    def log(self, it: int, stats: dict):
        self.history.append(dict(stats))
        keys = sorted({k for h in self.history for k in h})
        with atomic_path(self.csv) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(self.history)
        atomic_write_json(self.json, self.history)
        if self.wandb is not None:
            self.wandb.log({f"rl/{k}": v for k, v in stats.items() if isinstance(v, (int, float))}, step=it)

    def video(self, it: int, paths: list[Path]):
        if self.wandb is not None:
            import wandb  # heavy, optional: only when wandb logging is on

            gif = [p for p in paths if p.suffix == ".gif"]
            if gif:
                self.wandb.log({"rl/rollout": wandb.Video(str(gif[0]), format="gif")}, step=it)

    def close(self):
        if self.wandb is not None:
            self.wandb.finish()


def run_rl(cfg: DictConfig, run_dir: Path) -> dict:
    bc_path = cfg.get("checkpoint") or cfg.get("init")
    if not bc_path:
        raise ValueError("train policy stage=rl: set checkpoint=BC_POLICY (policy.pt or the BC run dir)")
    if not cfg.get("world_model_checkpoint"):
        raise ValueError("train policy stage=rl: set world_model_checkpoint=WORLD_MODEL (the learned sim)")
    bc = load_policy(bc_path)
    p = cfg.rl.ppo
    pcfg = PPOConfig.from_dict({k: v for k, v in OmegaConf.to_container(p, resolve=True).items()
                                if k not in RUNTIME_KEYS})
    devices = p.get("devices", 1)
    strategy = "auto"
    if str(devices) not in ("1", "auto"):  # several ranks: DDP with the collective timeout
        from lightning.fabric.strategies import DDPStrategy

        strategy = DDPStrategy(timeout=collective_timeout(cfg.trainer))
    fabric = L.Fabric(accelerator=str(p.get("accelerator", "auto")), devices=devices, strategy=strategy,
                      precision=str(p.get("precision", "32-true")))
    fabric.launch()
    fabric.seed_everything(int(cfg.seed))
    bc = bc.to(fabric.device)  # keep-the-best scores BC on the learned sim's device (a CUDA one too)
    settings = learned_sim_settings(cfg)
    settings["device"] = str(fabric.device)
    env = make_learned_env(pcfg.num_envs, bc.cfg.context_frames, settings, max_jerk=bc.cfg.max_jerk)
    if tuple(env.env.single_observation_space["image"].shape) != tuple(bc.obs_shape[1:]):
        raise ValueError(f"{bc_path}: policy frames {list(bc.obs_shape[1:])} but the learned sim "
                         f"renders {list(env.env.single_observation_space['image'].shape)}")
    # keep-the-best (rl.selection): PPO starts from training-segment contexts, BC and every
    # iterate are scored on held-out ones with common random numbers, the best one ships
    sel_cfg = dict(OmegaConf.to_container(cfg.rl.get("select") or {}, resolve=True))
    selector = scorer = None
    sel_seed, sel_steps, sel_every = int(cfg.seed) + 20_000, int(sel_cfg.get("steps") or settings.get("max_steps", 50)), 1
    if sel_cfg.get("enabled", True):
        core = env.env.core
        train_pool, select_pool, how = context_pools(core, settings.get("shards"), float(settings["val_fraction"]))
        core.pool = train_pool
        scorer = scoring_env(core, int(sel_cfg.get("envs", 16)), select_pool, bc.cfg.context_frames,
                             max_jerk=bc.cfg.max_jerk)
        sel_every = max(1, int(sel_cfg.get("every", 1)))
        selector = KeepBest(margin=float(sel_cfg.get("margin", 0.0)), min_z=float(sel_cfg.get("min_z") or 0.0))
        print(f"rl: keep-the-best, {how}")
        selector.offer(-1, bc, sim_score(bc, scorer, sel_seed, sel_steps))
    policy = copy.deepcopy(bc)
    start, opt_state = 0, None
    state_path = run_dir / "checkpoints" / "rl_state.pt"
    resume = resume_path(cfg, run_dir) is not None or (cfg.trainer.get("ckpt_path") == "last" and state_path.exists())
    if resume and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)  # tensors and plain data only
        policy.load_state_dict(st["policy"])
        start, opt_state = int(st["iteration"]) + 1, st["optimizer"]
    logger = RLLogger(cfg, run_dir, resume=start > 0)
    video_every = int(p.get("video_every") or 0)
    rec = {"it": start, "frames": []}
    bar = tqdm(total=pcfg.iterations, initial=start, desc="rl", disable=not cfg.trainer.enable_progress_bar)

    def on_step(obs, action, reward, done, info):
        if video_every and rec["it"] % video_every == 0:
            rec["frames"].append(frame_for_video(obs, info))

    def on_iteration(it, stats, optimizer):
        if rec["frames"]:
            paths = write_video(run_dir / "videos" / f"rollout_{it:05d}", np.stack(rec["frames"]))
            logger.video(it, paths)
            rec["frames"] = []
        rec["it"] = it + 1
        if selector is not None and ((it + 1) % sel_every == 0 or stats.get("last")):
            sc = sim_score(policy, scorer, sel_seed, sel_steps)
            better = selector.offer(it, policy, sc)
            stats.update({f"select_{k}": v for k, v in sc.items() if not isinstance(v, list)}, select_best=float(better),
                         select_z_vs_best=float("nan") if selector.history[-1]["z_vs_best"] is None
                         else selector.history[-1]["z_vs_best"])
        logger.log(it, stats)
        raw = getattr(policy, "module", policy)
        with atomic_path(state_path) as tmp:
            torch.save(to_cpu({"policy": raw.state_dict(), "optimizer": optimizer.state_dict(), "iteration": it}), tmp)
        bar.update(1)
        bar.set_postfix(ret=f"{stats['episode_return']:.3f}", ev=f"{stats['event_rate']:.3f}",
                        kl=f"{stats['kl_to_ref']:.4f}")

    t0 = time.perf_counter()
    with collective_errors("train_policy (rl)", None, collective_timeout(cfg.trainer).total_seconds()):
        history = train_ppo(policy, env, pcfg, fabric=fabric, ref_policy=bc, seed=int(cfg.seed),
                            on_step=on_step, on_iteration=on_iteration, start_iteration=start,
                            optimizer_state=opt_state)
    train_s = time.perf_counter() - t0
    bar.close()
    policy = getattr(policy, "module", policy)
    policy.eval()
    hist = logger.history
    last_state = copy.deepcopy(policy.state_dict())
    sel_metrics = {}
    if selector is not None:
        h0 = selector.history[0]
        last = selector.history[-1]
        if selector.best_iteration not in (None, -1) and sel_cfg.get("confirm", True):
            # the winner re-scored beside BC on fresh draws (rl.selection.KeepBest.confirm)
            policy.load_state_dict(selector.best_state)
            c = selector.confirm(sim_score(bc, scorer, sel_seed + 1, sel_steps),
                                 sim_score(policy, scorer, sel_seed + 1, sel_steps), bc.state_dict())
            print(f"rl: keep-the-best confirmation of iterate {c['iteration']} on fresh draws: {c['best']:.1f} "
                  f"against BC's {c['bc']:.1f} per 100 km (z = {c['z']}): "
                  f"{'ships' if c['confirmed'] else 'not confirmed, BC ships'}")
        policy.load_state_dict(selector.best_state)  # BC's weights when no iterate beat it
        sel_metrics = {"rl/selected_iteration": selector.best_iteration,
                       "rl/select_bc_per_100km": h0["predicted_per_100km"],
                       "rl/select_last_per_100km": last["predicted_per_100km"],
                       "rl/select_best_per_100km": selector.best_score,
                       "rl/select_bc_mean_speed": h0["mean_speed"],
                       "rl/select_best_mean_speed": next(h["mean_speed"] for h in selector.history
                                                          if h["iteration"] == selector.best_iteration),
                       "rl/select_last_z_vs_best": last["z_vs_best"],
                       **({f"rl/confirm_{k}": (float(v) if v is not None else float("nan"))
                           for k, v in selector.confirmation.items()} if selector.confirmation else {})}
        atomic_write_json(run_dir / "rl_selection.json", selector.history)
        with atomic_path(run_dir / "last_iterate.pt") as tmp:
            torch.save(to_cpu(last_state), tmp)
    # deterministic rollouts of the final and the BC policy in the learned sim: best/worst videos
    steps = int(settings.get("max_steps", 50))
    final = final_rollouts(policy, env, steps, seed=int(cfg.seed) + 10_000)
    same = state_sha256(policy.state_dict().items()) == state_sha256(bc.state_dict().items())
    base = final if same else final_rollouts(bc, env, steps, seed=int(cfg.seed) + 10_000)  # shipped BC: one drive
    order = final["returns"].argsort()
    for tag, i in (("worst", int(order[0])), ("best", int(order[-1]))):
        write_video(run_dir / "videos" / f"final_{tag}", final["frames"][i])

    def first_last(key):
        vals = [h.get(key) for h in hist if h.get(key) is not None and math.isfinite(h.get(key))]
        return (vals[0], vals[-1]) if vals else (float("nan"), float("nan"))

    metrics = {"rl/train_seconds": train_s, "rl/iterations": len(hist), "rl/resumed_from_iteration": start,
               "rl/env_steps": len(hist) * pcfg.num_envs * pcfg.rollout_steps,
               "rl/sim_predicted_per_100km": final["predicted_per_100km"],
               "rl/bc_sim_predicted_per_100km": base["predicted_per_100km"],
               "rl/sim_return": float(final["returns"].mean()), "rl/bc_sim_return": float(base["returns"].mean()),
               **sel_metrics}
    metrics["return_mean"] = metrics["rl/sim_return"]  # the pipeline's headline name
    tp = cfg.rl.get("throughput") or {}
    if int(tp.get("envs") or 0) > 0:
        # imagined env steps/s at a large batch vs this machine's matmul roofline (the learning
        # issue's target: >= 50% of matmul FLOP/s / FLOPs per env step); a separate env, so the
        # training env's episodes are untouched
        tenv = make_learned_env(int(tp.envs), bc.cfg.context_frames, settings, max_jerk=bc.cfg.max_jerk)
        metrics["throughput"] = measure_throughput(tenv, steps=int(tp.get("steps", 3)), seed=int(cfg.seed),
                                                   device=str(fabric.device))
        t = metrics["throughput"]
        libs = ", ".join(f"{k[len('matmul_flops_per_s_'):]} {v / 1e9:.0f}" for k, v in t.items()
                         if k in ("matmul_flops_per_s_blas", "matmul_flops_per_s_onednn"))
        print(f"rl: learned sim at batch {t['envs']}: {t['steps_per_s']:.1f} env steps/s; "
              f"{t['flops_per_env_step'] / 1e9:.2f} GFLOP per env step, matmul {t['matmul_flops_per_s'] / 1e9:.1f} "
              f"GFLOP/s (best of {libs}) -> bound {t['bound_steps_per_s']:.1f} steps/s; fraction "
              f"{t['roofline_fraction']:.3f} (against BLAS alone {t['roofline_fraction_blas']:.3f})")
        del tenv
    for key in ("episode_return", "event_rate", "kl_to_ref", "uncertainty", "predicted_per_100km"):
        a, z = first_last(key)
        metrics[f"rl/{key}_first"], metrics[f"rl/{key}_last"] = a, z
    save_policy(policy, run_dir / "policy.pt", meta={
        "stage": "rl", "bc_checkpoint": str(bc_path), "world_model": str(cfg.world_model_checkpoint),
        "stride": int(bc.checkpoint_meta.get("stride", cfg.data.stride)), "fps": float(cfg.data.fps),
        "metrics": metrics})
    write_metrics(run_dir, metrics)
    logger.close()
    mark_done(run_dir, {"stage": "rl", "policy": str(run_dir / "policy.pt")})
    return metrics
