"""``drivegpt pipeline``: every stage in order on one run directory (the main job).

fleet -> inspect -> tokenizer -> eval -> tokens -> world model -> eval -> BC -> RL ->
rollouts -> closed-loop evaluation -> export -> report.

Each stage runs in its own sub-directory ``run_dir/NN_<name>`` through the same
``run(cfg)`` the per-stage command uses (``drivegpt.stages.REGISTRY``, read by the CLI too), and is marked complete with a ``DONE`` file
written atomically after it succeeds. Re-running the pipeline skips complete stages and
resumes the first incomplete one (training stages resume from ``checkpoints/last.ckpt``,
shard writers skip finished shards), so a kill loses nothing already finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from drivegpt.config import compose
from drivegpt.data.loaders import shutdown_workers
from drivegpt.report import build_report
from drivegpt.runs import is_done, mark_done, read_json, write_metrics
from drivegpt.scoreboard import scoreboard
from drivegpt.scoreboard import summary as score_summary
from drivegpt.stages import REGISTRY, load


@dataclass
class Stage:
    name: str  # directory suffix and the name in the summary table
    stage: str  # the stage in drivegpt.stages.REGISTRY (its config and run(cfg))
    overrides: Callable[[dict], list[str]] = lambda ctx: []  # from earlier stages' outputs
    outputs: Callable[[Path], dict] = lambda d: {}  # what later stages read
    headline: tuple[str, ...] = ()  # metrics shown in the summary table
    extra: dict = field(default_factory=dict)

    @property
    def config(self) -> str:  # primary config in configs/
        return REGISTRY[self.stage].config


STAGES: list[Stage] = [
    Stage("fleet", "fleet_generate",
          lambda c: [f"out={c['dir']}/shards"],
          lambda d: {"frames": str(d / "shards")},
          ("km", "disengagements_per_100km")),
    Stage("inspect", "data_inspect",
          lambda c: [f"shards={c['frames']}"]),
    Stage("train_tokenizer", "train_tokenizer",
          lambda c: [f"data.shards={c['frames']}", "trainer.ckpt_path=last"],
          lambda d: {"tokenizer": str(d)}),
    Stage("eval_tokenizer", "eval_tokenizer",
          lambda c: [f"data.shards={c['frames']}", f"checkpoint={c['tokenizer']}"],
          headline=("tokenizer_eval/psnr", "tokenizer_eval/lane_psnr", "tokenizer_eval/codebook_usage")),
    Stage("tokenize", "tokenize",
          lambda c: [f"data.shards={c['frames']}", f"checkpoint={c['tokenizer']}",
                     f"out={c['dir']}/tokens"],
          lambda d: {"tokens": str(d / "tokens")}),
    Stage("train_world_model", "train_world_model",
          lambda c: [f"data.shards={c['tokens']}", "trainer.ckpt_path=last"],
          lambda d: {"world_model": str(d)}),
    Stage("eval_world_model", "eval_world_model",
          lambda c: [f"data.shards={c['tokens']}", f"frames={c['frames']}",
                     f"checkpoint={c['world_model']}"],
          headline=("bits_per_token", "auroc_2s", "counterfactual_psnr_gain_1s")),
    Stage("bc", "train_policy",
          lambda c: ["stage=bc", f"data.shards={c['frames']}", "trainer.ckpt_path=last"],
          lambda d: {"bc": str(d)},
          ("action_mae",)),
    Stage("rl", "train_policy",
          lambda c: ["stage=rl", f"data.shards={c['tokens']}",
                     f"world_model_checkpoint={c['world_model']}", f"checkpoint={c['bc']}",
                     "trainer.ckpt_path=last"],
          lambda d: {"rl": str(d)},
          ("return_mean",)),
    Stage("rollout", "rollout",
          lambda c: [f"data.shards={c['tokens']}", f"checkpoint={c['world_model']}",
                     "driver=policy", f"policy={c['rl']}"]),
    Stage("eval_policy", "eval_policy",
          lambda c: [f"policies.rl={c['rl']}", f"policies.bc={c['bc']}",
                     f"world_model_checkpoint={c['world_model']}", f"data.shards={c['tokens']}"],
          headline=("rl.disengagements_per_100km", "bc.disengagements_per_100km")),
    Stage("export", "export_policy",
          lambda c: [f"checkpoint={c['rl']}", f"data.shards={c['frames']}"],
          headline=("qnn.action_err_p95",)),
]


def stage_dir(run_dir: Path, i: int, stage: Stage) -> Path:
    return run_dir / f"{i + 1:02d}_{stage.name}"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def forwarded(user_overrides: list[str], stage_cfg: DictConfig) -> list[str]:
    """The user's overrides that apply to a stage (a key its config has, or a group choice)."""
    groups = {"experiment", "data", "sim", "learned_sim", "tokenizer", "world_model", "rl", "export", "trainer",
              "logger"}
    out = []
    for o in user_overrides:
        k = _key(o)
        if k in ("run_dir", "stages", "from_stage") or k.startswith("pipeline."):
            continue
        if k in groups or OmegaConf.select(stage_cfg, k, default="__missing__") != "__missing__":
            out.append(o)
    return out


def _task_overrides(cfg: DictConfig) -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed outside a hydra app (tests, notebooks)
        return list(cfg.get("overrides") or [])


def run_stage(stage: Stage, sdir: Path, ctx: dict, user_overrides: list[str]) -> dict:
    base = compose(stage.config, [o for o in user_overrides if _key(o) == "experiment"])
    overrides = forwarded(user_overrides, base) + stage.overrides({**ctx, "dir": str(sdir)}) + [
        f"run_dir={sdir}"]
    cfg = compose(stage.config, overrides)
    try:
        return load(stage.stage)(cfg) or {}
    finally:  # a stage's loader workers end with it (not at a garbage collection in a later stage)
        shutdown_workers()


def _headline(stage: Stage, metrics: dict) -> str:
    vals = []
    for k in stage.headline:
        v = OmegaConf.select(OmegaConf.create(metrics), k, default=None)
        if v is not None:
            vals.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(vals)


def run(cfg: DictConfig) -> dict:
    console = Console()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    user_overrides = _task_overrides(cfg)
    wanted = set(cfg.stages) if cfg.get("stages") else None
    ctx: dict = {}
    summary = {}
    rows = []
    for i, stage in enumerate(STAGES):
        sdir = stage_dir(run_dir, i, stage)
        if wanted is not None and stage.name not in wanted and not is_done(sdir):
            ctx.update(stage.outputs(sdir))
            continue
        console.rule(f"[bold]{i + 1}/{len(STAGES)} {stage.name}")
        if is_done(sdir):
            info = read_json(sdir / "DONE")
            status, seconds = "cached", info.get("seconds", 0.0)
            metrics = read_json(sdir / "metrics.json") if (sdir / "metrics.json").exists() else {}
            console.print(f"{stage.name}: complete, skipped")
        else:
            t0 = time.time()
            metrics = run_stage(stage, sdir, ctx, user_overrides)
            seconds = time.time() - t0
            mark_done(sdir, {"seconds": seconds})
            status = "ran"
        ctx.update(stage.outputs(sdir))
        headline = _headline(stage, metrics)
        summary[stage.name] = {"seconds": round(seconds, 1), "status": status, "dir": sdir.name,
                               "headline": headline}
        rows.append((stage.name, status, f"{seconds:.0f}", headline))

    total = sum(v["seconds"] for v in summary.values())
    targets = str(cfg.get("targets") or "demo")
    write_metrics(run_dir, {"stages": summary, "total_seconds": round(total, 1), "targets": targets})
    report = build_report(run_dir)
    table = Table(title=f"drivegpt pipeline: {run_dir}")
    for col in ("stage", "status", "seconds", "headline"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(f"report: {report}")
    score = score_summary(scoreboard(run_dir, targets))
    console.print(f"targets ({targets}): {score['targets_met_count']}/{score['targets_total']} met")
    metrics = {"stages": summary, "total_seconds": round(total, 1), "report": str(report), "targets": targets,
               "scoreboard": score}
    write_metrics(run_dir, metrics)
    return metrics
