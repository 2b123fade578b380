"""``drivegpt eval world_model``: held-out metrics of a trained world model -> metrics.json.

- tokens: bits/token and top-1 over held-out windows (all frames, and the last frame of each
  window alone = next-frame prediction from the full context);
- disengagement: AUROC and AP per horizon and per (horizon, cause) vs the base rate (roc.png);
- counterfactual fidelity (needs the tokenizer and road-world segments): PSNR/SSIM at 1 s and
  2 s of rollouts along logged/perturbed moves vs the road world's replay of the same moves,
  against copy-last-frame (counterfactual_grid.png);
- pose-following: an inverse-dynamics net trained on real decoded frame pairs recovers the
  yaw rate and lateral motion from generated frames: MAE and R^2 vs the commanded move.

The ground truth of the counterfactuals is the road world's ``replay``: this stage hands it to
``drivegpt.world_model.counterfactual`` (the world model itself knows no simulator).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from drivegpt.data.datamodule import FleetDataModule
from drivegpt.runs import mark_done, write_metrics
from drivegpt.sim.roadworld import replay
from drivegpt.stages.common import bind_fps, run_dir_of
from drivegpt.tokenizer import load_tokenizer
from drivegpt.world_model.checkpoint import load_world_model
from drivegpt.world_model.counterfactual import (Case, command_confusion, evaluate_counterfactuals, make_cases,
                                                  replay_pairs)
from drivegpt.world_model.evaluate import (NoWindowsError, disengagement_section, held_out_items, label_windows, real_pairs,
                                           token_metrics)
from drivegpt.world_model.pose_following import (following_metrics, motion_targets, predict_motion,
                                                 train_inverse_dynamics)
from drivegpt.world_model.metrics import r2
from drivegpt.world_model.viz import confusion_plot, counterfactual_grid, following_plot, roc_plot

log = logging.getLogger(__name__)


def replay_ground_truth(case: Case, moves: np.ndarray, height: int, width: int) -> np.ndarray:
    """The road world's render after each move of ``case``: uint8 [N, H, W, 3]."""
    return replay(case.meta, case.world_pose, moves, start_index=0, traffic=case.traffic, height=height,
                  width=width)


def bind_model_windows(cfg: DictConfig, model) -> DictConfig:
    """Bind ``cfg.data`` (in place, after data.fps) to the windows the world model reads: its
    length, its frame rate (stride) and its disengagement horizons. Returns ``cfg``."""
    bind_fps(cfg)
    with open_dict(cfg):
        cfg.data.context_frames = model.cfg.max_frames
        cfg.data.stride = max(1, int(round(float(cfg.data.fps) / model.cfg.fps)))  # the model's frame rate
        cfg.data.horizons = list(model.cfg.horizons)
    return cfg


def ruler_pairs(e, items, tokenizer, context: int, n_future: int, stride: int, fps: float):
    """The pose-following ruler's training pairs from the segments ``items`` (``e`` = the ``eval``
    config): ``eval.inverse_dynamics_pairs`` real pairs, plus ``eval.inverse_dynamics_replays``
    road-world replays per context along shifted moves (README "World model", *A ruler for
    counterfactual frames*). Returns ((a, b, targets), replay pairs among them), or None without
    real pairs."""
    pairs = real_pairs(items, tokenizer, stride, fps, int(e.get("inverse_dynamics_pairs", 2048)), int(e.seed))
    if pairs is None:
        return None
    draws = int(e.get("inverse_dynamics_replays", 0))
    cf = replay_pairs(make_cases(items, context, n_future, stride, len(items)), tokenizer, replay_ground_truth, fps,
                      draws, float(e.get("inverse_dynamics_replay_yaw_rate", 0.25)), float(e.accel),
                      int(e.seed)) if draws else None
    if cf is None:
        return pairs, 0
    return tuple(np.concatenate([p, q]) for p, q in zip(pairs, cf)), len(cf[2])


def counterfactual_and_following(cfg, model, tokenizer, run_dir: Path, split: str = "val") -> dict:
    """Counterfactual fidelity and pose-following from the contexts of ``split``: "val" (the
    held-out segments, what the stage reports) or "train" (e.g. to choose a sampling setting
    without looking at the evaluation's segments)."""
    e, d = cfg.eval, cfg.data
    stride, fps = int(d.stride), float(d.fps) / float(d.stride)
    seconds = [float(s) for s in e.seconds]
    n_future = int(round(max(seconds) * fps))
    if split not in ("val", "train"):
        raise ValueError(f"counterfactual contexts: split={split!r}, expected 'val' or 'train'")
    items = held_out_items(str(d.shards), split, float(d.val_fraction), int(e.counterfactual_contexts) * 4,
                         skip_bad=bool(d.get("skip_bad", False)))
    cases = make_cases(items, model.cfg.context_frames, n_future, stride, int(e.counterfactual_contexts))
    if not cases:
        log.warning("eval world_model: no road-world segments of the %s split long enough for counterfactuals", split)
        return {"counterfactual_cases": 0}
    commands = [str(c) for c in (e.get("commands") or ["logged", "left", "right", "brake"])]
    kinds = list(dict.fromkeys([*e.perturbations, *commands]))
    args = (seconds, fps, float(e.steer_yaw_rate), float(e.accel), float(e.temperature))
    snap = tokenizer.retokenize if e.get("retokenize", False) else None
    res, records = evaluate_counterfactuals(model, tokenizer, cases, kinds, *args, float(e.cfg_scale), int(e.seed),
                                            ground_truth=replay_ground_truth, snap=snap)
    res["counterfactual_cases"] = len(cases)
    # pose-following against the road world's replay of every command, and the pose-zeroed model
    zres, zeroed = evaluate_counterfactuals(model, tokenizer, cases, [commands[0]], *args, 0.0, int(e.seed),
                                            ground_truth=replay_ground_truth, snap=snap)
    # beside the model's gain on these moves, the pose-zeroed one's: does the gain reward following the move?
    res.update({f"psnr_gain_{s:g}s_{commands[0]}_pose_zeroed": zres[f"psnr_gain_{s:g}s"] for s in seconds
                if f"psnr_gain_{s:g}s" in zres})
    following, conf, conf0 = command_confusion(records, commands, zeroed)
    res.update(following)
    confusion_plot(run_dir / "command_confusion.png", conf, conf0, commands)
    first = records[0]["case"].segment_id
    idx = [int(round(s * fps)) - 1 for s in seconds]
    rows = {r["kind"]: (r["pred"][idx], r["true"][idx]) for r in records if r["case"].segment_id == first}
    counterfactual_grid(run_dir / "counterfactual_grid.png", rows, seconds, records[0]["last"])
    # pose-following
    n_seg = e.get("inverse_dynamics_segments", 64)
    train = held_out_items(str(d.shards), "train", float(d.val_fraction), None if n_seg is None else int(n_seg),
                           skip_bad=bool(d.get("skip_bad", False)))
    ruler = ruler_pairs(e, train, tokenizer, model.cfg.context_frames, n_future, stride, fps)
    if ruler is None:
        return res
    pairs, n_replay = ruler
    if n_replay:
        res["inverse_dynamics_replay_pairs"] = n_replay
    res["inverse_dynamics_real_pairs"] = len(pairs[2]) - n_replay
    net, mean, std = train_inverse_dynamics(*pairs, steps=int(e.inverse_dynamics_steps), seed=int(e.seed))
    held = real_pairs(items, tokenizer, stride, fps, 512, int(e.seed) + 1)
    # the inverse-dynamics net's ceiling: its R^2 on real frame pairs of the split (held out in the stage)
    if held is not None:
        res.update(following_metrics(predict_motion(net, mean, std, held[0], held[1]), held[2], "real_pairs_"))
        for q in ("yaw_rate", "lateral"):
            res[f"pose_following_{q}_r2_ceiling"] = res.get(f"real_pairs_{q}_r2")
    commanded = np.concatenate([motion_targets(r["moves"], fps) for r in records])

    def read(frames_of):  # the ruler's (yaw rate, lateral) of each record's consecutive frames
        a = np.concatenate([np.concatenate([r["last"][None], frames_of(r)[:-1]]) for r in records])
        b = np.concatenate([frames_of(r) for r in records])
        return predict_motion(net, mean, std, a, b)

    # the same ruler on the road world's replays of the same moves (through the tokenizer): what a
    # perfect world model would score; and the same model with the pose zeroed (its rollout for every move)
    tokenized = {id(r): np.asarray(tokenizer.decode(tokenizer.encode(torch.as_tensor(r["true"])))) for r in records}
    zero = {r["case"].segment_id: r["pred"] for r in zeroed}
    readings = {"world model": read(lambda r: r["pred"]), "road world's replay": read(lambda r: tokenized[id(r)])}
    if all(r["case"].segment_id in zero for r in records):
        readings["pose zeroed"] = read(lambda r: zero[r["case"].segment_id])
    n_steps = len(records[0]["pred"])
    by_step = {}
    for name, suffix in (("world model", ""), ("road world's replay", "_replay"), ("pose zeroed", "_pose_zeroed")):
        if name not in readings:
            continue
        for q, v in following_metrics(readings[name], commanded, "").items():
            res[f"pose_following_{q}{suffix}"] = v
        # per future frame: where the rollout loses the move (the ruler reads every replay frame alike)
        pred, cmd = readings[name].reshape(-1, n_steps, 2), commanded.reshape(-1, n_steps, 2)
        by_step[name] = [[r2(pred[:, j, k], cmd[:, j, k]) for j in range(n_steps)] for k in range(2)]
        res[f"pose_following_yaw_rate_r2{suffix}_by_frame"] = by_step[name][0]
        res[f"pose_following_lateral_r2{suffix}_by_frame"] = by_step[name][1]
    following_plot(run_dir / "pose_following.png", by_step, 1.0 / fps)
    return res


def run(cfg: DictConfig, tokenizer=None) -> dict:
    """``tokenizer``: an already loaded tokenizer (else cfg.tokenizer_path or the model's)."""
    run_dir = run_dir_of(cfg)
    torch.manual_seed(int(cfg.seed))
    t0 = time.time()
    model = load_world_model(cfg.checkpoint)
    cfg = bind_model_windows(cfg.copy(), model)
    dm = FleetDataModule(cfg, kind="windows", key="tokens")
    split = "val"
    try:
        metrics, dis = token_metrics(model, dm.dataloader("val", shuffle=False, resampled=False),
                                     int(cfg.eval.max_batches))
    except NoWindowsError:  # a small fleet: fall back as eval tokenizer does, and say so
        log.warning("eval world_model: no held-out windows (data.val_fraction=%s, %s): scoring ALL windows, "
                    "training ones included", cfg.data.val_fraction, cfg.data.shards)
        split = "all (no held-out windows in these shards)"
        metrics, dis = token_metrics(model, dm.dataloader("all", shuffle=False, resampled=False),
                                     int(cfg.eval.max_batches))
    metrics["split"] = split
    if dis is not None:
        nb = cfg.eval.get("baseline_batches")  # null = every training window (labels only: cheap)
        train_labels = label_windows(dm.dataloader("train", shuffle=False, resampled=False),
                                     int(nb) if nb is not None else 10 ** 9)
        dm_metrics = disengagement_section(*dis, model.cfg.horizons, train_labels)
        metrics.update({f"disengage_{k}": v for k, v in dm_metrics.items()})
        for h in model.cfg.horizons:  # headline names: auroc_2s_steer, auroc_2s_steer_baseline, positives_2s_steer
            for c in ("steer", "brake", "gas"):
                for k in (f"auroc_{h:g}s_{c}", f"auroc_{h:g}s_{c}_baseline", f"ap_{h:g}s_{c}",
                          f"ap_{h:g}s_{c}_baseline", f"positives_{h:g}s_{c}"):
                    if f"disengage_{k}" in metrics:
                        metrics[k] = metrics[f"disengage_{k}"]
        roc_plot(run_dir / "roc.png", *dis[:3], model.cfg.horizons)
        h2 = min(model.cfg.horizons, key=lambda h: abs(h - 2.0))
        pos = {c: metrics.get(f"positives_{h2:g}s_{c}") for c in ("steer", "brake", "gas")}
        msg = (f"eval world_model: the {h2:g} s disengagement AUROC rests on "
               f"{', '.join(f'{c.upper()} {n}' for c, n in pos.items() if n is not None)} positive frame(s) "
               f"of the {split} split")
        log.warning(msg) if any((n or 0) < 20 for n in pos.values()) else log.info(msg)
        print(msg)
    tok_path = cfg.get("tokenizer_path") or model.tokenizer_path
    if tokenizer is None and tok_path:
        tokenizer = load_tokenizer(tok_path)
    if tokenizer is not None:
        metrics.update(counterfactual_and_following(cfg, model, tokenizer, run_dir))
    else:
        log.warning("eval world_model: no tokenizer path; skipping counterfactual fidelity and pose-following")
    for alias, key in (("auroc_2s", "disengage_auroc_2s"), ("counterfactual_psnr_gain_1s", "psnr_gain_1s")):
        if key in metrics:  # the pipeline summary's headline names
            metrics[alias] = metrics[key]
    metrics.update(params=model.num_params(), eval_seconds=time.time() - t0, checkpoint=str(cfg.checkpoint))
    write_metrics(run_dir, metrics)
    mark_done(run_dir, {"metrics": "metrics.json"})
    return metrics
