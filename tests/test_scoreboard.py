"""The learning scoreboard: targets in pipeline order, baselines beside them, missing != met."""

import json

import torch

from drivegpt.scoreboard import STAGE_ORDER, markdown, scoreboard, summary
from drivegpt.tokenizer.evaluate import bicubic_baseline


def _write(run_dir, stage_index, name, metrics):
    d = run_dir / f"{stage_index:02d}_{name}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics))


def _demo_run(tmp_path, rl_rate):
    _write(tmp_path, 4, "eval_tokenizer", {"tokenizer_eval/psnr": 25.0, "tokenizer_eval/bicubic_psnr": 22.0,
                                          "tokenizer_eval/lane_psnr": 19.0, "tokenizer_eval/bicubic_lane_psnr": 12.0})
    _write(tmp_path, 7, "eval_world_model", {
        "disengage_positives_2s_steer": 25, "disengage_auroc_2s_steer": 0.8,
        "disengage_auroc_2s_steer_baseline": 0.55,
        "disengage_positives_2s_gas": 5, "disengage_auroc_2s_gas": 0.99,  # too few positives: not counted
        "pose_following_yaw_rate_r2": 0.6, "psnr_gain_1s": 1.0,
        "command_following_accuracy": 0.5, "command_following_accuracy_pose_zeroed": 0.25})
    _write(tmp_path, 8, "bc", {"bc/action_mae": 0.1, "bc/zero_action_mae": 0.16})
    _write(tmp_path, 11, "eval_policy", {"controllers": {"rl": {"per_100km": rl_rate, "km": 15.0},
                                                         "bc": {"per_100km": 300.0, "km": 15.0}}})
    (tmp_path / "metrics.json").write_text(json.dumps({"targets": "demo", "stages": {}}))
    return tmp_path


def test_demo_scoreboard_met_and_missed(tmp_path):
    rows = scoreboard(_demo_run(tmp_path, rl_rate=200.0), "demo")
    by = {r["metric"]: r for r in rows}
    assert by["auroc_2s_best_cause"]["value"] == 0.8  # GAS (5 positives) is not eligible
    assert by["auroc_2s_best_cause"]["baseline"] == 0.55
    assert by["tokenizer_eval/lane_psnr"]["met"] and by["tokenizer_eval/lane_psnr"]["baseline"] == 12.0
    assert by["rl_per_100km"]["met"] and by["rl_per_100km"]["baseline"] == 300.0
    assert by["command_following_accuracy"]["met"] and by["command_following_accuracy"]["baseline"] == 0.25
    assert summary(rows)["targets_met"] is True
    # pipeline order: a stage never precedes an earlier one
    idx = [STAGE_ORDER.index(r["stage"]) for r in rows]
    assert idx == sorted(idx)


def test_rl_worse_than_bc_is_a_miss(tmp_path):
    rows = scoreboard(_demo_run(tmp_path, rl_rate=400.0), "demo")
    s = summary(rows)
    assert s["rl_per_100km_met"] is False and s["targets_met"] is False
    assert "**no**" in markdown(rows)


def test_missing_figures_are_not_met(tmp_path):
    _write(tmp_path, 4, "eval_tokenizer", {"tokenizer_eval/psnr": 31.0})
    rows = scoreboard(tmp_path, "proof")
    by = {r["metric"]: r for r in rows}
    assert by["tokenizer_eval/psnr"]["met"] is True
    assert by["tokenizer_eval/lane_psnr"]["met"] is None and by["tokenizer_eval/lane_psnr"]["value"] is None
    s = summary(rows)
    assert s["targets_met"] is False and s["targets_met_count"] == 1


def test_bicubic_baseline_keeps_smooth_frames_and_loses_thin_lines():
    smooth = torch.linspace(0, 255, 64).round().to(torch.uint8)[None, :, None, None].expand(1, 64, 128, 3)
    err_smooth = (bicubic_baseline(smooth.contiguous(), (8, 16)).float() - smooth.float()).abs().mean()
    lines = torch.full((1, 64, 128, 3), 60, dtype=torch.uint8)
    lines[:, :, 40] = 250  # a one-pixel lane line
    err_lines = (bicubic_baseline(lines, (8, 16)).float() - lines.float())[:, :, 40].abs().mean()
    assert err_smooth < 3.0
    assert err_lines > 100.0  # an 8x16 grid of RGB pixels cannot keep a 1-px line
