"""Counterfactual fidelity: roll the world model out along logged and perturbed moves from
held-out contexts and compare the decoded frames with the road world's render of the same
moves, against the copy-last-frame baseline. The ground truth is handed in (``ground_truth``:
the road world's replay, given by the eval stage), so the world model depends on no simulator.

A case = one held-out token segment (with meta["sim"], world_pose and the traffic extra) and a
start: C context frames at the model's stride, then N = max(seconds) * fps future frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from drivegpt.data.loaders import encoded_tokens
from drivegpt.data.poses import strided_rel_poses
from drivegpt.world_model.metrics import psnr, ssim
from drivegpt.world_model.pose_following import motion_targets
from drivegpt.world_model.sampling import rollout


@dataclass
class Case:
    meta: dict
    tokens: np.ndarray  # int64 [C, h, w] context tokens
    rel_pose: np.ndarray  # [C + N, 6] logged strided moves from each kept frame
    speed: np.ndarray  # [C + N]
    world_pose: np.ndarray  # [6] world pose of the last context frame
    traffic: np.ndarray | None  # [N + 1, n, 4] rows at the last context frame and each future frame
    segment_id: str


def make_cases(items, context: int, n_future: int, stride: int, n_cases: int) -> list[Case]:
    """Cases from token sample dicts (data.shard_reading.iter_samples of held-out token shards)."""
    cases = []
    span = (context + n_future) * stride
    for item in items:
        t = len(item["times"])
        if t <= span or "sim" not in item["meta"]:
            continue
        start = (t - 1 - span) // 2 // stride * stride  # the middle of the segment, on the stride grid
        kept = start + stride * np.arange(context + n_future)
        rel = strided_rel_poses(item["rel_pose"], kept, stride).astype(np.float32)
        last = kept[context - 1]
        traffic = item.get("traffic")
        if traffic is not None:
            rows = np.minimum(last + stride * np.arange(n_future + 1), len(traffic) - 1)
            traffic = traffic[rows]
        cases.append(Case(item["meta"], encoded_tokens(item["tokens"], kept[:context], f"segment {item['meta']['segment_id']!r}"), rel,
                          item["speed"][kept].astype(np.float32), item["world_pose"][last].astype(np.float64),
                          traffic, str(item["meta"]["segment_id"])))
        if len(cases) >= n_cases:
            break
    return cases


def shift_moves(rel: np.ndarray, speed: np.ndarray, dt: float, yaw_rate: float = 0.0, accel: float = 0.0):
    """Moves [N, 6] and speeds [N] with ``yaw_rate`` rad/s added to every move (with the lateral
    offset of an arc, dy += dx * dyaw / 2) and the speed changed by ``accel`` m/s^2 from the first
    move on (never < 0; forward motion scaled with it)."""
    rel, speed = rel.astype(np.float64).copy(), speed.astype(np.float64).copy()
    n = len(rel)
    if yaw_rate:
        dyaw = yaw_rate * dt
        rel[:, 5] += dyaw
        rel[:, 1] += rel[:, 0] * dyaw / 2
    if accel:
        new = np.maximum(speed + accel * dt * np.arange(n), 0.0)
        nxt = np.maximum(speed + accel * dt * (np.arange(n) + 1), 0.0)
        scale = (new + nxt) / np.maximum(2 * speed, 1e-3)
        rel[:, :2] *= scale[:, None]
        speed = new
    return rel.astype(np.float32), speed.astype(np.float32)


def perturb(rel: np.ndarray, speed: np.ndarray, kind: str, dt: float, yaw_rate: float, accel: float):
    """Future moves [N, 6] and speeds [N] for a pose sequence ``kind``.

    logged: as driven; left/right: +-yaw_rate rad/s added (``shift_moves``); brake/accelerate:
    speed changed by -+accel m/s^2 (never < 0), forward motion scaled with it.
    """
    signs = {"logged": (0, 0), "left": (1, 0), "right": (-1, 0), "brake": (0, -1), "accelerate": (0, 1)}
    if kind not in signs:
        raise ValueError(f"unknown perturbation {kind!r} (logged, left, right, brake, accelerate)")
    sy, sa = signs[kind]
    return shift_moves(rel, speed, dt, sy * yaw_rate, sa * accel)


@torch.no_grad()
def replay_pairs(cases: list[Case], tokenizer, ground_truth: Callable[[Case, np.ndarray, int, int], np.ndarray],
                 fps: float, draws: int, yaw_rate: float, accel: float, seed: int = 0):
    """Frame pairs along counterfactual moves, for the pose-following ruler (README "World model",
    *A ruler for counterfactual frames*): from each case (training contexts), ``draws`` pose
    sequences with a yaw rate ~ U(-yaw_rate, yaw_rate) rad/s and an accel ~ U(-accel, accel) m/s^2
    added to the logged moves (``shift_moves``); the true frames after each move
    (``ground_truth``), encoded and decoded by the tokenizer as the ruler reads generated frames.
    Pairs: (the decoded last context frame, frame 1), (frame 1, frame 2), ...

    Returns (a, b uint8 [M, H, W, 3], motion targets [M, 2]), or None without cases or draws."""
    if not cases or draws < 1:
        return None
    rng = np.random.default_rng(seed)
    c = len(cases[0].tokens)
    n = len(cases[0].rel_pose) - c  # future frames (the last logged move leads past them)
    dt = 1.0 / fps
    chains = []
    for case in cases:
        for _ in range(draws):
            moves, _ = shift_moves(case.rel_pose[c - 1:], case.speed[c - 1:], dt, rng.uniform(-yaw_rate, yaw_rate),
                                   rng.uniform(-accel, accel))
            chains.append(replay_chain(case, moves[:n], tokenizer, ground_truth, fps))
    return tuple(np.concatenate(parts) for parts in zip(*chains))


@torch.no_grad()
def replay_chain(case: Case, moves: np.ndarray, tokenizer, ground_truth, fps: float):
    """The ruler's pairs along one move sequence [N, 6] from ``case``: (the decoded last context
    frame, frame 1), (frame 1, frame 2), ... of the true frames after each move (``ground_truth``),
    encoded and decoded by the tokenizer; returns (a, b uint8 [N, H, W, 3], motion targets [N, 2])."""
    h, w = tokenizer.frame_size
    last = _np(tokenizer.decode(torch.as_tensor(case.tokens[-1:], dtype=torch.long)))
    true = _np(tokenizer.decode(tokenizer.encode(torch.as_tensor(ground_truth(case, moves, h, w)))))
    seq = np.concatenate([last, true])
    return seq[:-1], seq[1:], motion_targets(moves, fps)


@torch.no_grad()
def evaluate_counterfactuals(model, tokenizer, cases: list[Case], kinds, seconds, fps: float, yaw_rate: float,
                             accel: float, temperature: float = 0.0, cfg_scale: float = 1.0, seed: int = 0, *,
                             ground_truth: Callable[[Case, np.ndarray, int, int], np.ndarray], snap=None):
    """Roll out every (case, kind); returns (metrics dict, records for plots and pose-following).

    ``ground_truth(case, moves [N,6], height, width)`` -> uint8 [N, H, W, 3]: the true frames
    after each move (the road world's replay).

    records: list of dicts {case, kind, pred uint8 [N,H,W,3], true [N,H,W,3], last [H,W,3]
    (decoded last context frame), moves [N,6]}. ``snap``: ``sampling.rollout``'s (e.g. the
    tokenizer's round trip of each generated frame, read by the later steps).
    """
    c = len(cases[0].tokens)
    n = len(cases[0].rel_pose) - c
    dt = 1.0 / fps
    h, w = tokenizer.frame_size
    ctx_tok, ctx_pose, ctx_speed, fut_pose, fut_speed, meta = [], [], [], [], [], []
    for case in cases:
        for kind in kinds:
            moves, speeds = perturb(case.rel_pose[c - 1:], case.speed[c - 1:], kind, dt, yaw_rate, accel)
            ctx_tok.append(case.tokens)
            ctx_pose.append(np.concatenate([case.rel_pose[: c - 1], moves[:1]]))
            ctx_speed.append(np.concatenate([case.speed[: c - 1], speeds[:1]]))
            fut_pose.append(moves[1:n])
            fut_speed.append(speeds[1:n])
            meta.append((case, kind, moves[:n]))
    t = lambda xs, dt_=torch.float32: torch.as_tensor(np.stack(xs), dtype=dt_)  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    frames, probs = rollout(model, t(ctx_tok, torch.long), t(ctx_pose), t(ctx_speed), t(fut_pose), t(fut_speed),
                            temperature=temperature, cfg_scale=cfg_scale, generator=gen, snap=snap)
    b = frames.shape[0]
    pred = _np(tokenizer.decode(frames.flatten(0, 1).cpu())).reshape(b, n, h, w, 3)
    last = _np(tokenizer.decode(torch.as_tensor(np.stack([m[0].tokens[-1] for m in meta]))))
    records = []
    for i, (case, kind, moves) in enumerate(meta):
        true = ground_truth(case, moves, h, w)
        records.append({"case": case, "kind": kind, "pred": pred[i], "true": true, "last": last[i],
                        "moves": moves, "probs": probs[i].numpy()})
    out = {}
    for s in seconds:
        j = int(round(s * fps)) - 1
        if j >= n:
            continue
        for kind in list(kinds) + ["all"]:
            rs = [r for r in records if kind in ("all", r["kind"])]
            p = np.stack([r["pred"][j] for r in rs])
            g = np.stack([r["true"][j] for r in rs])
            base = np.stack([r["last"] for r in rs])
            tag = f"{s:g}s" if kind == "all" else f"{s:g}s_{kind}"
            out[f"psnr_{tag}"] = float(psnr(p, g).mean())
            out[f"psnr_copy_last_{tag}"] = float(psnr(base, g).mean())
            out[f"ssim_{tag}"] = float(ssim(p, g).mean())
            out[f"ssim_copy_last_{tag}"] = float(ssim(base, g).mean())
            out[f"psnr_gain_{tag}"] = out[f"psnr_{tag}"] - out[f"psnr_copy_last_{tag}"]
    return out, records


def _np(x) -> np.ndarray:
    return x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def command_confusion(records, commands, baseline_records=None) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Pose-following anchored in the ground truth: for every held-out case and command c, is the
    rollout under c nearer (mean squared error over all future frames) to the road world's replay
    of c than to its replay of any other command?

    ``records``: evaluate_counterfactuals records covering every command in ``commands`` for each
    case; ``baseline_records``: one record per case (any kind) whose ``pred`` is the rollout of the
    same model with its pose conditioning removed (cfg_scale=0: the null move), used as rollout(c)
    for every c. Returns (metrics, confusion [C, C] counts: row = commanded, column = the replay
    nearest to the rollout, baseline confusion or None). Chance = 1 / len(commands); a model that
    ignores the pose makes the same rollout for every command, so one column takes each row.
    """
    commands = list(commands)
    by_case: dict = {}
    for r in records:
        if r["kind"] in commands:
            by_case.setdefault(r["case"].segment_id, {})[r["kind"]] = r
    base = {r["case"].segment_id: r for r in (baseline_records or [])}
    k = len(commands)
    conf = np.zeros((k, k), np.int64)
    conf_base = np.zeros((k, k), np.int64) if baseline_records else None
    margins = []
    for sid, rs in by_case.items():
        if any(c not in rs for c in commands):
            continue
        true = np.stack([rs[c]["true"].astype(np.float64) for c in commands])  # [C, N, H, W, 3]

        def dist(pred):
            return ((true - pred.astype(np.float64)[None]) ** 2).mean(axis=(1, 2, 3, 4))  # [C]

        for i, c in enumerate(commands):
            d = dist(rs[c]["pred"])
            conf[i, int(np.argmin(d))] += 1
            others = np.delete(d, i)
            margins.append(10 * np.log10(others.min() / max(d[i], 1e-10)))  # dB the true replay wins by
            if conf_base is not None and sid in base:
                conf_base[i, int(np.argmin(dist(base[sid]["pred"])))] += 1
    n = int(conf.sum())
    out = {"command_following_accuracy": float(np.trace(conf) / n) if n else None,
           "command_following_chance": 1.0 / k, "command_following_cases": n // k if k else 0,
           "command_following_margin_db": float(np.mean(margins)) if margins else None,
           "command_following_commands": commands}
    if conf_base is not None and conf_base.sum():
        out["command_following_accuracy_pose_zeroed"] = float(np.trace(conf_base) / conf_base.sum())
    for i, c in enumerate(commands):
        row = conf[i].sum()
        out[f"command_following_accuracy_{c}"] = float(conf[i, i] / row) if row else None
    out["command_following_confusion"] = conf.tolist()
    if conf_base is not None:
        out["command_following_confusion_pose_zeroed"] = conf_base.tolist()
    return out, conf, conf_base
