"""``drivegpt eval world_model``: held-out metrics of a trained world model -> metrics.json.

- tokens: bits/token and top-1 over held-out windows (all frames, and the last frame of each
  window alone = next-frame prediction from the full context);
- disengagement: AUROC and AP per horizon and per (horizon, cause) vs the base rate (roc.png);
- counterfactual fidelity (needs the tokenizer and road-world segments): PSNR/SSIM at 1 s and
  2 s of rollouts along logged/perturbed moves vs the road world's replay of the same moves,
  against copy-last-frame (counterfactual_grid.png);
- pose-following: an inverse-dynamics net trained on real decoded frame pairs recovers the
  yaw rate and lateral motion from generated frames: MAE and R^2 vs the commanded move.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from drivegpt.runs import mark_done, write_metrics
from drivegpt.world_model.checkpoint import load_world_model
from drivegpt.world_model.metrics import disengage_metrics
from drivegpt.world_model.module import unpack_batch

log = logging.getLogger(__name__)


@torch.no_grad()
def token_metrics(model, loader, max_batches: int) -> tuple[dict, tuple]:
    """Bits/token, top-1 and disengagement predictions over held-out window batches."""
    nll = top1 = count = nll_last = top1_last = count_last = 0.0
    probs, targets, masks, speeds = [], [], [], []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        b = unpack_batch(batch)
        out = model(b["tokens"], b["rel_pose"], b["speed"])
        logits, tgt = out["logits"].float(), b["tokens"].flatten(2)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 2), tgt.flatten(), reduction="none").view_as(tgt)
        hit = (logits.argmax(-1) == tgt).float()
        nll += float(ce.sum()); top1 += float(hit.sum()); count += ce.numel()
        nll_last += float(ce[:, -1].sum()); top1_last += float(hit[:, -1].sum()); count_last += ce[:, -1].numel()
        if b["target"] is not None:
            m = b["mask"].clone()
            m[:, 0] = 0
            probs.append(torch.sigmoid(out["disengage"].float()))
            targets.append(b["target"])
            masks.append(m)
            speeds.append(b["speed"])  # speed at each frame: the speed-only baseline's input
    if count == 0:
        raise ValueError("no held-out windows (check data.shards, data.val_fraction and segment lengths)")
    res = {"bits_per_token": nll / count / math.log(2), "top1": top1 / count,
           "bits_per_token_next_frame": nll_last / count_last / math.log(2), "top1_next_frame": top1_last / count_last,
           "eval_windows_tokens": int(count)}
    dis = tuple(torch.cat(x) for x in (probs, targets, masks, speeds)) if probs else None
    return res, dis


def label_windows(loader, max_batches: int):
    """(speed [N], target [N, n_h, 3], mask [N, n_h, 3]) of frames 1.. of window batches (the
    frames the disengagement head is scored on), e.g. to fit the speed-only baseline."""
    sp, tg, mk = [], [], []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        b = unpack_batch(batch)
        if b["target"] is None:
            return None
        sp.append(b["speed"][:, 1:].reshape(-1))
        tg.append(b["target"][:, 1:].flatten(0, 1))
        mk.append(b["mask"][:, 1:].flatten(0, 1))
    return (torch.cat(sp), torch.cat(tg), torch.cat(mk)) if sp else None


def disengagement_section(probs, target, mask, speed, horizons, train_labels) -> dict:
    """Held-out disengagement metrics per horizon and cause, with the speed-only logistic
    regression (fit on ``train_labels`` = label_windows(train split)) beside each."""
    from drivegpt.world_model.metrics import speed_baseline

    base = None
    if train_labels is not None:
        base = speed_baseline(*train_labels, speed.reshape(-1)).reshape(probs.shape)
    return disengage_metrics(probs, target, mask, horizons, baseline=base)


def _items(shards: str, split: str, val_fraction: float, limit: int):
    from data.loaders import split_of
    from data.shards import iter_samples

    out = []
    for item in iter_samples(shards, frames=False):
        if isinstance(item, dict) and split_of(str(item["meta"]["segment_id"]), val_fraction) == split:
            out.append(item)
            if len(out) >= limit:
                break
    return out


def real_pairs(items, tokenizer, stride: int, fps: float, max_pairs: int, seed: int):
    """Decoded real frame pairs (i, i+stride) and their motion targets."""
    from data.poses import strided_rel_poses
    from drivegpt.world_model.pose_following import motion_targets

    rng = np.random.default_rng(seed)
    pairs = []
    for item in items:
        t = len(item["times"])
        for i in range(0, t - stride - 1, stride):
            pairs.append((item, i))
    if not pairs:
        return None
    pick = rng.choice(len(pairs), min(max_pairs, len(pairs)), replace=False)
    ta, tb, y = [], [], []
    for j in pick:
        item, i = pairs[j]
        ta.append(item["tokens"][i]); tb.append(item["tokens"][i + stride])
        y.append(motion_targets(strided_rel_poses(item["rel_pose"], np.array([i]), stride)[0], fps))
    dec = lambda tk: np.asarray(tokenizer.decode(torch.as_tensor(np.stack(tk), dtype=torch.long)))  # noqa: E731
    return dec(ta), dec(tb), np.stack(y)


def counterfactual_and_following(cfg, model, tokenizer, run_dir: Path) -> dict:
    from drivegpt.world_model.counterfactual import command_confusion, evaluate_counterfactuals, make_cases
    from drivegpt.world_model.pose_following import (following_metrics, motion_targets, predict_motion,
                                                     train_inverse_dynamics)
    from drivegpt.world_model.viz import confusion_plot, counterfactual_grid

    e, d = cfg.eval, cfg.data
    stride, fps = int(d.stride), float(d.fps) / float(d.stride)
    seconds = [float(s) for s in e.seconds]
    n_future = int(round(max(seconds) * fps))
    val = _items(str(d.shards), "val", float(d.val_fraction), int(e.counterfactual_contexts) * 4)
    cases = make_cases(val, model.cfg.context_frames, n_future, stride, int(e.counterfactual_contexts))
    if not cases:
        log.warning("eval world_model: no held-out road-world segments long enough for counterfactuals")
        return {"counterfactual_cases": 0}
    commands = [str(c) for c in (e.get("commands") or ["logged", "left", "right", "brake"])]
    kinds = list(dict.fromkeys([*e.perturbations, *commands]))
    args = (seconds, fps, float(e.steer_yaw_rate), float(e.accel), float(e.temperature))
    res, records = evaluate_counterfactuals(model, tokenizer, cases, kinds, *args, float(e.cfg_scale), int(e.seed))
    res["counterfactual_cases"] = len(cases)
    # pose-following against the road world's replay of every command, and the pose-zeroed model
    _, zeroed = evaluate_counterfactuals(model, tokenizer, cases, [commands[0]], *args, 0.0, int(e.seed))
    following, conf, conf0 = command_confusion(records, commands, zeroed)
    res.update(following)
    confusion_plot(run_dir / "command_confusion.png", conf, conf0, commands)
    first = records[0]["case"].segment_id
    idx = [int(round(s * fps)) - 1 for s in seconds]
    rows = {r["kind"]: (r["pred"][idx], r["true"][idx]) for r in records if r["case"].segment_id == first}
    counterfactual_grid(run_dir / "counterfactual_grid.png", rows, seconds, records[0]["last"])
    # pose-following
    train = _items(str(d.shards), "train", float(d.val_fraction), 64)
    pairs = real_pairs(train, tokenizer, stride, fps, 2048, int(e.seed))
    if pairs is None:
        return res
    net, mean, std = train_inverse_dynamics(*pairs, steps=int(e.inverse_dynamics_steps), seed=int(e.seed))
    held = real_pairs(val, tokenizer, stride, fps, 512, int(e.seed) + 1)
    if held is not None:  # the inverse-dynamics net's ceiling: its R^2 on real held-out frame pairs
        res.update(following_metrics(predict_motion(net, mean, std, held[0], held[1]), held[2], "real_pairs_"))
        for q in ("yaw_rate", "lateral"):
            res[f"pose_following_{q}_r2_ceiling"] = res.get(f"real_pairs_{q}_r2")
    a = np.concatenate([np.concatenate([r["last"][None], r["pred"][:-1]]) for r in records])
    b = np.concatenate([r["pred"] for r in records])
    commanded = np.concatenate([motion_targets(r["moves"], fps) for r in records])
    res.update(following_metrics(predict_motion(net, mean, std, a, b), commanded, "pose_following_"))
    return res


def run(cfg: DictConfig, tokenizer=None) -> dict:
    """``tokenizer``: an already loaded tokenizer (else cfg.tokenizer_path or the model's)."""
    from data.datamodule import FleetDataModule

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    t0 = time.time()
    model = load_world_model(cfg.checkpoint)
    cfg = cfg.copy()
    with open_dict(cfg):  # windows of the model's length, labels at the model's horizons
        cfg.data.context_frames = model.cfg.max_frames
        cfg.data.stride = max(1, int(round(float(cfg.data.fps) / model.cfg.fps)))  # the model's frame rate
        cfg.data.horizons = list(model.cfg.horizons)
    dm = FleetDataModule(cfg, kind="windows", key="tokens")
    metrics, dis = token_metrics(model, dm.dataloader("val", shuffle=False, resampled=False), int(cfg.eval.max_batches))
    if dis is not None:
        from drivegpt.world_model.viz import roc_plot

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
    tok_path = cfg.get("tokenizer_path") or model.tokenizer_path
    if tokenizer is None and tok_path:
        from drivegpt.tokenizer import load_tokenizer

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
