"""World model end to end on road-world token shards: train + eval stages, pose conditioning.

The frames are tokenized with a fixed patch-colour quantizer (``PatchTokenizer``: the
Tokenizer contract's encode/decode/frame_size/grid/vocab_size), so these tests do not depend on
training a VQ tokenizer; the stages use ``drivegpt.tokenizer.load_tokenizer`` otherwise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drivegpt.config import compose
from drivegpt.world_model import load_world_model, sampling

from drivegpt.world_model.patch_tokenizer import PatchTokenizer

V = PatchTokenizer().vocab_size


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run ~20x faster single-threaded on the shared 2-core machine (no thread spinning)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def token_item(i: int) -> dict:
    from sim.roadworld import drive_segment

    seg = drive_segment(100 + i, 10.0, None, 32, 64)
    tok = PatchTokenizer().encode(seg.frames).numpy().astype(np.int16)
    meta = dict(seg.meta, tokens={"vocab_size": V, "grid": [4, 8], "tokenizer_path": None})
    item = {k: v for k, v in seg.arrays().items() if k != "lane_mask"}
    return dict(item, tokens=tok, meta=meta)


@pytest.fixture(scope="module")
def token_shards(tmp_path_factory):
    from data.shards import write_shards

    out = tmp_path_factory.mktemp("wm_tokens")
    write_shards(out, 8, token_item, maxcount=2, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(token_shards, tmp_path_factory):
    from drivegpt.world_model.train import run

    run_dir = tmp_path_factory.mktemp("wm_train")
    cfg = compose("train_world_model", [
        "experiment=tiny", f"run_dir={run_dir}", f"data.shards={token_shards}", "data.context_frames=4",
        "data.val_fraction=0.3", "trainer.max_steps=200", "trainer.limit_val_batches=1", "trainer.val_check_interval=null",
        "world_model.n_embd=64", "world_model.n_head=4", "world_model.lr=3e-3", "world_model.warmup_steps=20"])
    metrics = run(cfg)
    return run_dir, metrics


def test_train_stage_writes_a_loadable_model_that_beats_chance(trained):
    run_dir, metrics = trained
    assert (run_dir / "world_model.pt").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 200
    m = load_world_model(run_dir / "world_model.pt")
    assert m.cfg.grid == (4, 8) and m.cfg.context_frames == 3 and bool(m.cond_fitted)
    assert metrics["train_bits_per_token"] < 0.5 * np.log2(V)


def test_left_and_right_moves_generate_frames_that_turn_the_right_way(trained, token_shards):
    """From the same contexts, commanded left/right turns give different next frames, each
    closer to the road world's own render of that turn than to the opposite one."""
    from data.shards import iter_samples
    from drivegpt.world_model.counterfactual import ground_truth, make_cases, perturb

    run_dir, _ = trained
    model = load_world_model(run_dir / "world_model.pt")
    tk = PatchTokenizer()
    cases = make_cases(list(iter_samples(str(token_shards), frames=False)), 3, 1, 2, 10)
    assert len(cases) >= 5
    closer, differ, margin = [], [], []
    for case in cases:
        pred, true = {}, {}
        for kind in ("left", "right"):
            moves, _ = perturb(case.rel_pose[2:], case.speed[2:], kind, 0.1, 2.0, 0.0)
            pose = torch.as_tensor(np.concatenate([case.rel_pose[:2], moves[:1]]))[None]
            nxt, _ = sampling.step(model, torch.as_tensor(case.tokens)[None], pose,
                                   torch.as_tensor(case.speed[:3])[None], temperature=0.0)
            pred[kind] = tk.decode(nxt).numpy()[0].astype(float)
            true[kind] = ground_truth(case, moves[:1], 32, 64)[0].astype(float)
        err = lambda a, b: np.abs(a - b).mean()  # noqa: E731
        differ.append(err(pred["left"], pred["right"]))
        margin.append(err(pred["left"], true["right"]) + err(pred["right"], true["left"])
                      - err(pred["left"], true["left"]) - err(pred["right"], true["right"]))
        closer.append(margin[-1] > 0)
    assert np.mean(differ) > 1.0, differ  # mean abs pixel difference between the two predictions
    assert np.mean(margin) > 0 and np.mean(closer) >= 0.6, (margin, closer)


def test_eval_stage_writes_metrics_and_pictures(trained, token_shards, tmp_path):
    from drivegpt.world_model.evaluate import run

    run_dir, _ = trained
    cfg = compose("eval_world_model", [
        "experiment=tiny", f"run_dir={tmp_path}", f"data.shards={token_shards}", "data.val_fraction=0.3",
        f"checkpoint={run_dir / 'world_model.pt'}", "eval.counterfactual_contexts=2", "eval.inverse_dynamics_steps=30"])
    m = run(cfg, tokenizer=PatchTokenizer())
    assert 0 < m["bits_per_token"] < np.log2(V) and 0 < m["top1"] <= 1
    assert m["counterfactual_cases"] == 2
    for s in ("1s", "2s"):
        assert np.isfinite(m[f"psnr_{s}"]) and np.isfinite(m[f"psnr_copy_last_{s}"]) and 0 < m[f"ssim_{s}"] <= 1
    assert "pose_following_yaw_rate_r2" in m and "disengage_auroc_2s" in m
    assert (tmp_path / "counterfactual_grid.png").exists() and (tmp_path / "metrics.json").exists()
