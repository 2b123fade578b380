"""World-model metrics: disengagement per cause with the speed-only baseline, and the
ground-truth-anchored command-following confusion. Pure functions, no training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivegpt.world_model.counterfactual import command_confusion
from drivegpt.world_model.metrics import CAUSES, disengage_metrics, fit_logistic, speed_baseline, ssim

H = (0.5, 1.0, 2.0, 4.0)


def labels(n=3000, seed=0, rates=(0.05, 0.08, 0.03)):
    """targets/mask [n, 4, 3]; masked entries carry the opposite label (a metric that read them
    would be pulled the wrong way)."""
    g = np.random.default_rng(seed)
    y = (g.random((n, 1, 3)) < np.asarray(rates)).astype(np.float32).repeat(len(H), 1)
    mask = g.random((n, len(H), 3)) > 0.2
    y = np.where(mask, y, 1 - y)
    return torch.as_tensor(y), torch.as_tensor(mask)


def test_planted_predictor_scores_one_per_cause_and_inverted_scores_zero():
    y, mask = labels()
    g = np.random.default_rng(1)
    clean = torch.where(mask, y, 1 - y)  # what a head knowing the (unmasked) truth would say
    planted = 0.1 + 0.8 * clean + 0.05 * torch.as_tensor(g.random(y.shape), dtype=torch.float32)
    # heads with very different calibration: per-cause figures must not care
    res = disengage_metrics(planted * torch.tensor([1.0, 0.01, 0.3]), y, mask, H, baseline=0.5 * torch.ones_like(y))
    inv = disengage_metrics(1 - planted, y, mask, H)
    for c in CAUSES:
        key = f"auroc_2s_{c.lower()}"
        assert res[key] > 0.99 and inv[key] < 0.01, (key, res[key], inv[key])
        assert res[f"ap_2s_{c.lower()}"] > 0.95
        sel = mask[:, 2, CAUSES.index(c)]
        assert res[f"positives_2s_{c.lower()}"] == int(y[:, 2, CAUSES.index(c)][sel].sum()) > 20
        assert res[f"negatives_2s_{c.lower()}"] == int(sel.sum()) - res[f"positives_2s_{c.lower()}"]
        assert res[f"auroc_2s_{c.lower()}_baseline"] == pytest.approx(0.5)  # a constant ranks nothing
    # "any cause" combines the heads as probabilities, it never ranks one head's scores against another's
    res = disengage_metrics(planted, y, mask, H)
    assert res["auroc_2s"] > 0.95 and inv["auroc_2s"] < 0.05


def test_a_cause_without_held_out_positives_reports_none_and_zero_positives():
    y, mask = labels(rates=(0.05, 0.0, 0.03))
    y[:, :, 1] = 0
    res = disengage_metrics(torch.rand_like(y), y, mask, H)
    assert res["auroc_2s_brake"] is None and res["positives_2s_brake"] == 0
    assert res["auroc_2s_steer"] is not None


def test_speed_baseline_is_fit_on_train_and_learns_the_sign():
    g = np.random.default_rng(0)
    n = 4000
    speed = g.uniform(0, 30, n)
    t = np.zeros((n, len(H), 3), np.float32)
    t[:, :, 2] = (speed < 5)[:, None]  # GAS: slow cars
    t[:, :, 0] = (g.random(n) < 0.05)[:, None]  # STEER: unrelated to speed
    mask = np.ones_like(t, bool)
    held = g.uniform(0, 30, 1000)
    p = speed_baseline(speed, t, mask, held)
    assert p.shape == (1000, len(H), 3)
    y = torch.zeros(1000, len(H), 3)
    y[:, :, 2] = torch.as_tensor(held < 5)[:, None]
    y[:, :, 0] = torch.as_tensor(g.random(1000) < 0.05)[:, None]
    res = disengage_metrics(p, y, torch.ones_like(y), H, baseline=p)
    assert res["auroc_2s_gas_baseline"] > 0.99  # the fitted sign: slower = riskier
    assert 0.35 < res["auroc_2s_steer_baseline"] < 0.65
    assert float(p[:, 2, 1].std()) == 0.0  # BRAKE: no positive in training -> its base rate


def test_fit_logistic_recovers_a_known_slope():
    g = np.random.default_rng(0)
    x = g.normal(size=(20000, 1))
    y = (g.random(20000) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0)))).astype(float)
    w = fit_logistic(x, y)
    assert w[0] == pytest.approx(2.0, abs=0.1) and w[1] == pytest.approx(-1.0, abs=0.1)


class _Case:
    def __init__(self, sid):
        self.segment_id = sid


def _records(follow: bool, n_cases=5, commands=("logged", "left", "right", "brake")):
    g = np.random.default_rng(0)
    recs, zeroed = [], []
    for i in range(n_cases):
        case = _Case(f"s{i}")
        true = {c: g.integers(0, 255, (3, 8, 8, 3)).astype(np.uint8) for c in commands}
        for c in commands:
            pred = true[c] if follow else true["logged"]
            noisy = np.clip(pred.astype(int) + g.integers(-5, 6, pred.shape), 0, 255).astype(np.uint8)
            recs.append({"case": case, "kind": c, "pred": noisy, "true": true[c]})
        zeroed.append({"case": case, "kind": "logged", "pred": true["brake"], "true": true["logged"]})
    return recs, zeroed, list(commands)


def test_command_confusion_follower_ignorer_and_pose_zeroed_baseline():
    recs, zeroed, commands = _records(follow=True)
    res, conf, conf0 = command_confusion(recs, commands, zeroed)
    assert res["command_following_accuracy"] == 1.0 and res["command_following_cases"] == 5
    assert np.array_equal(conf, 5 * np.eye(4, dtype=int)) and res["command_following_margin_db"] > 10
    # the pose-zeroed rollout is the same for every command: one column takes every row
    assert res["command_following_accuracy_pose_zeroed"] == pytest.approx(0.25) and (conf0[:, 3] == 5).all()
    assert res["command_following_chance"] == 0.25
    recs, _, _ = _records(follow=False)
    res, conf, _ = command_confusion(recs, commands)
    assert res["command_following_accuracy"] == pytest.approx(0.25) and (conf[:, 0] == 5).all()
    assert res["command_following_margin_db"] < 0


def test_ssim_is_one_for_the_same_frames_and_falls_with_the_damage():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 32, 64, 3), dtype=np.uint8)
    a[:, 16:] = 90  # a flat road under a textured sky
    same = ssim(a, a)
    assert same.shape == (4,) and np.allclose(same, 1.0, atol=1e-5)
    worse = [ssim(a, np.clip(a.astype(int) + rng.integers(-n, n + 1, a.shape), 0, 255).astype(np.uint8)).mean()
             for n in (5, 20, 60)]
    assert 1.0 > worse[0] > worse[1] > worse[2] > 0.0, worse
