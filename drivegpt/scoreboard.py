"""The learning scoreboard: each target of a preset, the measured value and its baseline.

A pipeline run directory holds one ``NN_<stage>/metrics.json`` per stage. ``scoreboard(run_dir,
preset)`` reads them and returns one row per target, in pipeline order:

    {"stage", "target", "metric", "value", "baseline", "baseline_name", "met", "note"}

``met`` is True/False, or None when the figure is missing (the stage did not run or did not
measure it); a missing figure is never counted as met. The targets are the learning issue's
(``proof``) and the demo's (``demo``); which set a run is scored against is the preset's
top-level ``targets:`` key, stored in the pipeline's ``metrics.json``.

The report shows this table first; ``benchmarks/learning.py`` prints it as one JSON line.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STAGE_ORDER = ("fleet", "inspect", "train_tokenizer", "eval_tokenizer", "tokenize", "train_world_model",
               "eval_world_model", "bc", "rl", "rollout", "eval_policy", "export")


@dataclass(frozen=True)
class Target:
    stage: str  # the pipeline stage whose metrics.json holds the figure
    target: str  # human-readable target
    metric: str | Callable[[dict], float | None]  # dotted key in that metrics.json, or a function of all
    op: str  # ">=" or "<="
    threshold: float | Callable[[dict], float | None]
    baseline: str | Callable[[dict], float | None] | None = None
    baseline_name: str = ""
    name: str = ""  # key in the JSON line (defaults to the metric key)


def _get(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        if part in cur:
            cur = cur[part]
            continue
        # keys that themselves contain dots/slashes (``tokenizer_eval/psnr``) are stored flat
        return None
    return cur


def find(metrics: dict, stage: str, key: str):
    """``metrics[stage]``'s value at ``key`` (flat key first, then dotted path)."""
    m = metrics.get(stage) or {}
    if key in m:
        return m[key]
    return _get(m, key)


def load_run(run_dir: str | Path) -> dict:
    """{stage name: metrics dict} for every ``NN_<stage>/metrics.json`` under a pipeline run dir,
    plus ``"pipeline"`` for the run dir's own metrics.json."""
    run_dir = Path(run_dir)
    out: dict = {}
    for d in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        f = d / "metrics.json"
        if d.is_dir() and f.exists() and "_" in d.name and d.name.split("_", 1)[0].isdigit():
            try:
                out[d.name.split("_", 1)[1]] = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not valid JSON ({e})") from None
    top = run_dir / "metrics.json"
    if top.exists():
        out["pipeline"] = json.loads(top.read_text())
    return out


def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _value(spec, metrics: dict, stage: str):
    if spec is None:
        return None
    if callable(spec):
        return _num(spec(metrics))
    return _num(find(metrics, stage, spec))


# -- derived figures --------------------------------------------------------------------------
def _policy(name: str, key: str) -> Callable[[dict], float | None]:
    return lambda m: find(m, "eval_policy", f"controllers.{name}.{key}")


def _ratio(a: Callable, b: Callable) -> Callable[[dict], float | None]:
    def f(m):
        x, y = _num(a(m)), _num(b(m))
        return x / y if x is not None and y not in (None, 0.0) else None
    return f


def _sim_gap(name: str) -> Callable[[dict], float | None]:
    """max(pred/measured, measured/pred): 1 is perfect, <= 2 is 'within 2x'."""
    def f(m):
        r = _num(find(m, "eval_policy", f"sim_to_real.{name}.predicted_over_measured"))
        if r is None or r <= 0:
            return None
        return max(r, 1.0 / r)
    return f


def _best_cause_pair(m: dict, min_pos: int) -> tuple[float | None, float | None]:
    """(AUROC, speed-only baseline AUROC) at 2 s of the best cause among causes with >= min_pos
    held-out positives."""
    best = (None, None)
    for c in ("steer", "brake", "gas"):
        n = _num(find(m, "eval_world_model", f"disengage_positives_2s_{c}"))
        a = _num(find(m, "eval_world_model", f"disengage_auroc_2s_{c}"))
        if n is not None and n >= min_pos and a is not None and (best[0] is None or a > best[0]):
            best = (a, find(m, "eval_world_model", f"disengage_auroc_2s_{c}_baseline"))
    return best


def _above(v):
    """A threshold strictly above ``v`` (a tie with the baseline is not beating it)."""
    v = _num(v)
    return None if v is None else v + 1e-9


def _km(m):
    return find(m, "eval_policy", "controllers.rl.km")


TOKENIZER_BASELINE = "bicubic to the token grid and back"

# rollouts under left/straight/right/brake vs the road world's replay of each (chance 1/4)
COMMAND_FOLLOWING = Target(
    "eval_world_model", "command following (replay-anchored) beats the pose-zeroed model",
    "command_following_accuracy", ">=",
    lambda m: _above(find(m, "eval_world_model", "command_following_accuracy_pose_zeroed")),
    "command_following_accuracy_pose_zeroed", "pose zeroed")

# the baseline of pose following; the ruler's ceilings (real pairs, the road world's replays of the
# same moves) are in the stage's metrics beside it
POSE_ZEROED = "the same model with the pose zeroed"

PROOF: list[Target] = [
    Target("eval_tokenizer", "tokenizer PSNR >= 30 dB", "tokenizer_eval/psnr", ">=", 30.0,
           "tokenizer_eval/bicubic_psnr", TOKENIZER_BASELINE),
    Target("eval_tokenizer", "lane-marking PSNR >= 24 dB", "tokenizer_eval/lane_psnr", ">=", 24.0,
           "tokenizer_eval/bicubic_lane_psnr", TOKENIZER_BASELINE),
    Target("eval_tokenizer", "codebook use >= 90%", "tokenizer_eval/codebook_usage", ">=", 90.0),
    Target("eval_world_model", "2 s AUROC STEER >= 0.9", "disengage_auroc_2s_steer", ">=", 0.9,
           "disengage_auroc_2s_steer_baseline", "logistic regression on speed"),
    Target("eval_world_model", ">= 50 held-out STEER positives", "disengage_positives_2s_steer", ">=", 50),
    Target("eval_world_model", "2 s AUROC BRAKE >= 0.9", "disengage_auroc_2s_brake", ">=", 0.9,
           "disengage_auroc_2s_brake_baseline", "logistic regression on speed"),
    Target("eval_world_model", ">= 50 held-out BRAKE positives", "disengage_positives_2s_brake", ">=", 50),
    Target("eval_world_model", "pose-following yaw-rate R^2 >= 0.9", "pose_following_yaw_rate_r2", ">=", 0.9,
           "pose_following_yaw_rate_r2_pose_zeroed", POSE_ZEROED),
    Target("eval_world_model", "pose-following lateral R^2 >= 0.8", "pose_following_lateral_r2", ">=", 0.8,
           "pose_following_lateral_r2_pose_zeroed", POSE_ZEROED),
    Target("eval_world_model", "inverse-dynamics ceiling R^2 >= 0.95", "pose_following_yaw_rate_r2_ceiling", ">=",
           0.95),
    COMMAND_FOLLOWING,
    Target("eval_world_model", "counterfactual 1 s PSNR gain >= 3 dB", "psnr_gain_1s", ">=", 3.0,
           lambda m: 0.0, "copy-last-frame (gain 0)"),
    Target("eval_policy", "learned sim within 2x of ground truth (BC)", _sim_gap("bc"), "<=", 2.0,
           name="sim_gap_bc"),
    Target("eval_policy", "learned sim within 2x of ground truth (RL)", _sim_gap("rl"), "<=", 2.0,
           name="sim_gap_rl"),
    Target("rl", "imagined steps/s >= 50% of the matmul roofline", "throughput.roofline_fraction", ">=", 0.5,
           name="env_steps_roofline_fraction"),
    Target("eval_policy", "RL <= 0.5x BC disengagements/100 km",
           _ratio(_policy("rl", "per_100km"), _policy("bc", "per_100km")), "<=", 0.5,
           name="rl_over_bc"),
    Target("eval_policy", "RL <= fleet autopilot disengagements/100 km", _policy("rl", "per_100km"), "<=",
           _policy("autopilot", "per_100km"), _policy("autopilot", "per_100km"), "autopilot",
           name="rl_per_100km"),
    Target("eval_policy", "RL speed >= 90% of flow", _policy("rl", "speed_ratio"), ">=", 0.9,
           _policy("bc", "speed_ratio"), "BC", name="rl_speed_ratio"),
    Target("eval_policy", ">= 100 km of held-out scenarios", _km, ">=", 100.0, name="eval_km"),
]

DEMO: list[Target] = [
    Target("eval_tokenizer", "tokenizer PSNR beats bicubic", "tokenizer_eval/psnr", ">=",
           lambda m: find(m, "eval_tokenizer", "tokenizer_eval/bicubic_psnr"),
           "tokenizer_eval/bicubic_psnr", TOKENIZER_BASELINE),
    Target("eval_tokenizer", "lane-marking PSNR >= 18 dB", "tokenizer_eval/lane_psnr", ">=", 18.0,
           "tokenizer_eval/bicubic_lane_psnr", TOKENIZER_BASELINE),
    Target("eval_world_model", "2 s AUROC >= 0.75 (best cause with >= 20 positives)",
           lambda m: _best_cause_pair(m, 20)[0], ">=", 0.75, lambda m: _best_cause_pair(m, 20)[1],
           "logistic regression on speed", name="auroc_2s_best_cause"),
    Target("eval_world_model", "pose-following yaw-rate R^2 >= 0.5", "pose_following_yaw_rate_r2", ">=", 0.5,
           "pose_following_yaw_rate_r2_pose_zeroed", POSE_ZEROED),
    COMMAND_FOLLOWING,
    Target("eval_world_model", "counterfactual 1 s PSNR beats copy-last-frame", "psnr_gain_1s", ">=", 0.0,
           lambda m: 0.0, "copy-last-frame (gain 0)"),
    Target("bc", "BC action MAE beats do-nothing", "bc/action_mae", "<=",
           lambda m: find(m, "bc", "bc/zero_action_mae"), "bc/zero_action_mae", "do nothing (cruise straight)"),
    Target("eval_policy", "RL <= BC disengagements/100 km", _policy("rl", "per_100km"), "<=",
           _policy("bc", "per_100km"), _policy("bc", "per_100km"), "BC", name="rl_per_100km"),
]

PRESETS = {"proof": PROOF, "demo": DEMO}
_OPS = {">=": operator.ge, "<=": operator.le}


def scoreboard(run_dir: str | Path | dict, preset: str = "demo") -> list[dict]:
    """Rows (see the module docstring) for ``preset``'s targets, in pipeline order."""
    if preset not in PRESETS:
        raise ValueError(f"scoreboard: unknown targets preset {preset!r}; choose one of {sorted(PRESETS)}")
    metrics = run_dir if isinstance(run_dir, dict) else load_run(run_dir)
    rows = []
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    for t in sorted(PRESETS[preset], key=lambda t: order.get(t.stage, len(order))):
        value = _value(t.metric, metrics, t.stage)
        thr = _num(t.threshold(metrics)) if callable(t.threshold) else float(t.threshold)
        base = _value(t.baseline, metrics, t.stage)
        met = None if value is None or thr is None else bool(_OPS[t.op](value, thr))
        name = t.name or (t.metric if isinstance(t.metric, str) else t.target)
        rows.append({"stage": t.stage, "target": t.target, "metric": name, "value": value,
                     "threshold": thr, "op": t.op, "baseline": base, "baseline_name": t.baseline_name,
                     "met": met})
    return rows


def summary(rows: list[dict]) -> dict:
    """One flat dict: every figure by metric name, its baseline, and ``targets_met`` (all met)."""
    out: dict = {}
    for r in rows:
        key = r["metric"].replace("/", "_").replace(".", "_")
        out[key] = r["value"]
        if r["baseline"] is not None:
            out[f"{key}_baseline"] = r["baseline"]
        out[f"{key}_met"] = r["met"]
    out["targets_total"] = len(rows)
    out["targets_met_count"] = sum(1 for r in rows if r["met"])
    out["targets_met"] = all(r["met"] for r in rows)
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| stage | target | measured | baseline | met |", "|---|---|---|---|---|"]
    for r in rows:
        v = "not measured" if r["value"] is None else f"{r['value']:.4g}"
        b = "" if r["baseline"] is None else f"{r['baseline']:.4g} ({r['baseline_name']})"
        met = {True: "yes", False: "**no**", None: "n/a"}[r["met"]]
        lines.append(f"| {r['stage']} | {r['target']} | {v} | {b} | {met} |")
    return "\n".join(lines)
