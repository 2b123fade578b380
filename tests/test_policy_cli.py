"""`drivegpt train policy stage=bc|rl` on the tiny config, end to end on CPU."""

import json

import numpy as np
import pytest
import torch

from drivegpt.data.shards import write_shards
from drivegpt.cli import main
from drivegpt.rl.checkpoint import load_policy


def token_item(i: int) -> dict:
    """Token samples for the tiny world model (vocab 16, grid 2x4), 20 Hz, straight driving."""
    rng = np.random.default_rng(i)
    t = 16
    speed = (10 + 0.1 * np.arange(t)).astype(np.float32)
    rel = np.zeros((t, 6), np.float32)
    rel[:-1, 0] = speed[:-1] / 20
    meta = {"source": "synthetic-test", "segment_id": f"tok{i:04d}", "fps": 20.0,
            "camera": {"fx": 40.0, "fy": 40.0, "cx": 32, "cy": 16, "width": 64, "height": 32},
            "vehicle": {"wheelbase": 2.7}, "tokens": {"vocab_size": 16, "grid": [2, 4], "tokenizer": "x"}}
    return dict(tokens=rng.integers(0, 16, (t, 2, 4)).astype(np.int16), rel_pose=rel, speed=speed,
                world_pose=np.zeros((t, 6), np.float32), engaged=np.ones(t, bool),
                disengage=np.zeros(t, np.int8), times=np.arange(t) / 20.0, meta=meta)


@pytest.fixture(scope="module")
def bc_run(tmp_path_factory):
    from synth_fleet import make_segment

    tmp = tmp_path_factory.mktemp("bc")
    seeds = [0, 1, 2, 3, 6, 8]  # seg0006 and seg0008 are held out at val_fraction=0.5
    write_shards(tmp / "fleet", 6, lambda i: make_segment(seed=seeds[i], t=20, events={12: 1}), maxcount=1,
                 progress=False)
    run_dir = tmp / "bc_run"
    assert main(["train", "policy", "stage=bc", "experiment=tiny", f"data.shards={tmp / 'fleet'}",
                 f"run_dir={run_dir}", "data.val_fraction=0.5"]) == 0
    return run_dir


def test_bc_cli_writes_policy_and_metrics(bc_run):
    m = json.loads((bc_run / "metrics.json").read_text())
    assert np.isfinite(m["bc/action_mae"]) and m["bc/steps"] == 20
    assert m["policy/flops_per_frame"] > 0 and m["policy/bottleneck_bits"] > 0
    p = load_policy(bc_run)
    assert p.obs_shape == (2, 32, 64, 3) and p.checkpoint_meta["stage"] == "bc"
    assert (bc_run / "checkpoints" / "last.ckpt").exists()
    # the Lightning checkpoint loads as a policy too (same weights)
    q = load_policy(bc_run / "checkpoints" / "last.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(p.state_dict().values(), q.state_dict().values()))


@pytest.fixture(scope="module")
def learned_sim(tmp_path_factory):
    from drivegpt.sim.learned.testing import tiny_checkpoints

    tmp = tmp_path_factory.mktemp("sim")
    wm, _ = tiny_checkpoints(tmp / "models")
    write_shards(tmp / "tokens", 4, token_item, maxcount=1, progress=False)
    return wm, tmp / "tokens"


def test_eval_cli_table_plot_and_sim_to_real_gap(bc_run, learned_sim, tmp_path):
    wm, tokens = learned_sim
    run_dir = tmp_path / "eval"
    assert main(["eval", "policy", "experiment=tiny", f"policies.bc={bc_run}", f"world_model_checkpoint={wm}",
                 f"data.shards={tokens}", "data.val_fraction=1.0", f"run_dir={run_dir}"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert set(m["controllers"]) == {"bc", "autopilot", "human"}
    for row in m["controllers"].values():
        # 2 scenarios x 6 s of engaged driving at road speeds (minus takeovers)
        assert 0 < row["km"] < 2 * 6 * 45 / 1000 and row["speed_ratio"] > 0
    assert m["sim_to_real"]["bc"]["predicted_per_100km"] >= 0
    assert m["sim_to_real"]["bc"]["measured_per_100km"] == m["controllers"]["bc"]["per_100km"]
    table = (run_dir / "table.md").read_text()
    assert "| bc |" in table and "| human |" in table and "learned sim" in table
    png = (run_dir / "closed_loop.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    videos = sorted(p.name for p in (run_dir / "videos").iterdir())  # the policy in the ground truth
    assert videos == ["bc_ground_truth.gif", "bc_ground_truth.webm"]


def test_eval_drives_a_policy_once_per_weights(bc_run, learned_sim, tmp_path):
    """RL that shipped BC has BC's weights: it is not driven again and gets BC's figures; a
    policy that differs in one weight is driven."""
    from drivegpt.checkpoints import state_sha256
    from drivegpt.rl.checkpoint import save_policy

    wm, tokens = learned_sim
    other = load_policy(str(bc_run))
    assert state_sha256(other.state_dict().items()) == state_sha256(load_policy(str(bc_run)).state_dict().items())
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    assert state_sha256(other.state_dict().items()) != state_sha256(load_policy(str(bc_run)).state_dict().items())
    save_policy(other, tmp_path / "other.pt", meta=dict(other.checkpoint_meta))
    run_dir = tmp_path / "eval"
    assert main(["eval", "policy", "experiment=tiny", f"policies.bc={bc_run}", f"policies.rl={bc_run}",
                 f"+policies.other={tmp_path / 'other.pt'}", "rl.eval.controllers=[]", f"world_model_checkpoint={wm}",
                 f"data.shards={tokens}", "data.val_fraction=1.0", f"run_dir={run_dir}"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    (copy, first), = m["same_weights_as"].items()  # one of bc / rl is driven, the other reuses it
    assert {copy, first} == {"bc", "rl"}
    assert m["controllers"][copy] == m["controllers"][first] and m["sim_to_real"][copy] == m["sim_to_real"][first]
    assert m["seconds_per_controller"][copy] == 0.0 < m["seconds_per_controller"]["other"]
    assert m["controllers"]["other"]["km"] > 0 and "other" in m["sim_to_real"]
    videos = sorted(p.name for p in (run_dir / "videos").iterdir())
    assert videos == sorted(f"{n}_ground_truth.{x}" for n in ("bc", "rl", "other") for x in ("gif", "webm"))


def test_rl_cli_from_bc_in_tiny_learned_sim(bc_run, learned_sim, tmp_path):
    wm, tokens = learned_sim
    run_dir = tmp_path / "rl_run"
    args = ["train", "policy", "stage=rl", "experiment=tiny", f"checkpoint={bc_run}",
            f"world_model_checkpoint={wm}", f"data.shards={tokens}", "data.val_fraction=1.0",
            f"run_dir={run_dir}"]
    assert main(args) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["rl/iterations"] == 3 and m["rl/env_steps"] == 3 * 4 * 6
    assert m["rl/kl_to_ref_first"] is not None and m["rl/kl_to_ref_first"] >= 0
    tp = m["throughput"]  # the learned sim at experiment=tiny's throughput batch vs the matmul roofline
    assert tp["envs"] == 4 and tp["flops_per_env_step"] > 0 and tp["steps_per_s"] > 0
    assert tp["roofline_fraction"] == pytest.approx(tp["steps_per_s"] / tp["bound_steps_per_s"])
    hist = json.loads((run_dir / "rl_history.json").read_text())
    assert len(hist) == 3 and all("uncertainty" in h and "predicted_per_100km" in h for h in hist)
    assert (run_dir / "rl_log.csv").read_text().count("\n") == 4
    assert (run_dir / "videos" / "rollout_00000.gif").exists() and (run_dir / "videos" / "final_best.gif").exists()
    p = load_policy(run_dir)
    assert p.checkpoint_meta["stage"] == "rl"
    # keep-the-best: BC (-1) and every iterate scored on held-out contexts; the best one ships
    sel = json.loads((run_dir / "rl_selection.json").read_text())
    assert [s["iteration"] for s in sel] == [-1, 0, 1, 2]
    best = min(sel, key=lambda s: s["predicted_per_100km"])
    assert m["rl/selected_iteration"] == best["iteration"]
    assert m["rl/select_best_per_100km"] <= m["rl/select_bc_per_100km"]
    if best["iteration"] == -1:
        bc = load_policy(bc_run)
        assert all(torch.equal(p.state_dict()[k], v) for k, v in bc.state_dict().items())
    # resume: nothing left to do, the history is kept
    assert main(args + ["trainer.ckpt_path=last"]) == 0
    assert len(json.loads((run_dir / "rl_history.json").read_text())) == 3
    from drivegpt.config import compose
    from drivegpt.stages.train_policy import run

    with pytest.raises(ValueError, match="checkpoint=BC_POLICY"):
        run(compose("train_policy", ["stage=rl", "experiment=tiny", f"run_dir={tmp_path / 'x'}"]))


def test_bc_cli_viewpoint_augments_with_the_fleet_camera(bc_run, tmp_path, monkeypatch):
    """rl.bc.viewpoint.prob > 0: the stage reads the camera from the shards' meta and every
    training batch goes through the augmentation (prob 0, the default, never builds it)."""
    from drivegpt.rl import viewpoint

    seen = []
    orig = viewpoint.ViewpointAugment.__call__

    def spy(self, frames, speed, target, generator=None):
        seen.append((self.camera, frames.shape[0]))
        return orig(self, frames, speed, target, generator)

    monkeypatch.setattr(viewpoint.ViewpointAugment, "__call__", spy)
    shards = bc_run.parent / "fleet"
    assert main(["train", "policy", "stage=bc", "experiment=tiny", f"data.shards={shards}",
                 f"run_dir={tmp_path / 'vp'}", "data.val_fraction=0.5", "rl.bc.max_steps=3",
                 "rl.bc.viewpoint.prob=1.0"]) == 0
    assert len(seen) == 3
    meta = json.loads(next(iter(_metas(shards))))
    cam = seen[0][0]
    assert (cam.fx, cam.width, cam.height) == (meta["camera"]["fx"], meta["camera"]["width"], meta["camera"]["height"])


def _metas(shards):
    import tarfile

    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith("meta.json"):
                    yield tar.extractfile(m).read()
