"""Refitting the disengagement head on frozen inputs, after the world model is trained.

Trained jointly with the token loss for a few hundred steps, the head sees each of the training
split's few dozen (demo) to few hundred (proof) disengagements about once. Measured on the
proof's fourth run: the joint head (start-token state + the frame's move) ranked the held-out 2 s
STEER windows at AUROC 0.50, while an MLP on the last four moves alone, fit afterwards with early
stopping, ranked them at 0.65 (a gradient-boosted classifier on the same moves: 0.69). Most
disengagements are the comfort rules on lateral acceleration and jerk, which the moves show.

``refit_hazard_head`` fits the head again, full batch, with the class-balanced loss of training,
a few weight decays and early stopping, all chosen on a part of the *training* segments held
aside (never the evaluation's held-out split), and replaces the joint head. (It is not compared
with the joint head on the held-aside windows: the joint head trained on them. In the proof's
fifth run that comparison kept a joint head scoring 0.59 held aside against the refit's 0.55,
and 0.56 on the held-out split, where a refit on the fourth run's features scored 0.65.)

The choice is only honest for inputs the world model did not learn on those segments: the moves
are data, but the start token's hidden state comes from a transformer trained on every training
segment (with the hazard's gradient), so held-aside segments are not held out from it
(measured: a head on that state alone had a mean AUROC of 0.61 on held-aside segments, ~0.53 on
the held-out split; with the world model trained on one H100 for 3,462 steps at batch 64, 0.99 on
held-aside segments against STEER 0.60 / BRAKE 0.50 held out, README "Measurement log"). Use it
with ``dis_start=False`` (the head reads the moves alone). Fitting the head on states of segments
the transformer never saw (cross-fitting) does not help either: 0.54 / 0.42 on the H100 run
(``benchmarks/hazard_crossfit.py``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from drivegpt.world_model.losses import balanced_bce, unpack_batch
from drivegpt.world_model.metrics import _auroc_ap


@torch.no_grad()
def hazard_inputs(model, loader, max_batches: int | None = None) -> dict | None:
    """One pass over window batches -> the head's inputs and labels for frames 1.. of every window:
    start [N, d] (the start token's hidden state; every earlier frame visible, as in sampling),
    feats [N, f] (``hazard_features``), target / mask [N, n_h, c], segment (list of N ids).
    None when the batches carry no disengagement targets."""
    model.eval()
    start, feats, target, mask, segment = [], [], [], [], []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        b = unpack_batch(batch)
        if b["target"] is None:
            return None
        k = b["tokens"].shape[1]
        out = model(b["tokens"], b["rel_pose"], b["speed"])
        start.append(out["start"][:, 1:].float().flatten(0, 1))
        feats.append(model.hazard_features(b["rel_pose"], b["speed"], k)[:, 1:].float().flatten(0, 1))
        target.append(b["target"][:, 1:].flatten(0, 1))
        mask.append(b["mask"][:, 1:].flatten(0, 1))
        ids = batch.get("segment_id", ["?"] * b["tokens"].shape[0])
        segment += [str(s) for s in ids for _ in range(k - 1)]
    if not start:
        return None
    return dict(start=torch.cat(start), feats=torch.cat(feats), target=torch.cat(target), mask=torch.cat(mask),
                segment=segment)


def ranking_score(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, min_positives: int = 5):
    """Mean AUROC over the (horizon, cause) cells with >= ``min_positives`` positives (and a
    negative) among the masked-in rows; (score, cells). Every horizon and cause counts alike."""
    aucs = []
    for j in range(target.shape[1]):
        for c in range(target.shape[2]):
            sel = mask[:, j, c] > 0
            y = target[sel, j, c]
            if int(y.sum()) >= min_positives and int((1 - y).sum()) > 0:
                aucs.append(float(_auroc_ap(logits[sel, j, c].float(), y)[0]))
    return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)


def _fresh(head: torch.nn.Module, seed: int) -> torch.nn.Module:
    new = copy.deepcopy(head)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in new.modules():
            if isinstance(m, torch.nn.Linear):
                bound = 1.0 / m.in_features ** 0.5
                m.weight.uniform_(-bound, bound, generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
    return new


def refit_hazard_head(model, data: dict, *, steps: int = 300, lr: float = 3e-3,
                      weight_decays=(1e-2, 1e-1, 1.0), aside_fraction: float = 0.25, eval_every: int = 10,
                      seed: int = 0, keep_joint: bool = False) -> dict:
    """Refit ``model.dis_head`` on ``data`` (``hazard_inputs`` of the training split) in place.

    The training segments are split: ``aside_fraction`` of them (at least one) held aside. For
    each weight decay a fresh head trains ``steps`` full-batch AdamW steps on the rest with
    ``balanced_bce`` (rates of the fitting rows); every ``eval_every`` steps its
    ``ranking_score`` on the held-aside rows is read, and the best (weight decay, step) is kept.
    It replaces the joint head; with ``keep_joint`` only if it scores above the joint head on the
    held-aside rows (the joint head trained on them, so that comparison favours it). The report
    has both scores either way.
    """
    if steps < 1 or eval_every < 1:
        raise ValueError(f"refit_hazard_head: steps ({steps}) and eval_every ({eval_every}) must be >= 1")
    if not 0.0 < aside_fraction < 1.0:
        raise ValueError(f"refit_hazard_head: aside_fraction={aside_fraction} must be in (0, 1)")
    segs = sorted(set(data["segment"]))
    report = {"windows_frames": len(data["segment"]), "segments": len(segs), "replaced": False}
    if len(segs) < 2:
        report["reason"] = "fewer than two training segments: nothing to hold aside"
        return report
    rng = np.random.default_rng(seed)
    aside = set(rng.choice(segs, max(1, int(round(aside_fraction * len(segs)))), replace=False).tolist())
    is_aside = torch.as_tensor([s in aside for s in data["segment"]])
    x = model.hazard_input(data["start"], data["feats"]).float()
    target, mask = data["target"].float(), data["mask"].float()
    fit, val = ~is_aside, is_aside
    prior = model.dis_prior.float()

    def logits(head, rows):
        return head(x[rows]).view(-1, *target.shape[1:]) + prior

    head0 = model.dis_head
    with torch.no_grad():
        before, cells = ranking_score(logits(head0.float(), val), target[val], mask[val])
    report.update(aside_segments=len(aside), cells=cells, aside_score_joint=before)
    if cells == 0:
        report["reason"] = "no (horizon, cause) with enough positives among the held-aside segments"
        return report
    rate = ((target[fit] * mask[fit]).sum(0) / mask[fit].sum(0).clamp_min(1)).clamp(1e-4, 1 - 1e-4)
    best = (-1.0, None, None, None)
    for wd in weight_decays:
        torch.manual_seed(seed)
        head = _fresh(head0, seed).float()
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=float(wd))
        for step in range(1, steps + 1):
            head.train()
            loss = balanced_bce(logits(head, fit) - prior, target[fit], mask[fit], rate)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % eval_every == 0 or step == steps:
                head.eval()
                with torch.no_grad():
                    score, _ = ranking_score(logits(head, val), target[val], mask[val])
                if score > best[0]:
                    best = (score, float(wd), step, copy.deepcopy(head.state_dict()))
    score, wd, step, state = best
    report.update(aside_score_refit=score, weight_decay=wd, steps=step)
    if state is not None and (score > before or not keep_joint):
        head0.load_state_dict(state)
        report["replaced"] = True
    return report
